"""Training samples per second on real-size LaSOT frames (1280x720), full vs DCT-scaled decoding.

    python benchmarks/real_frames.py [--samples 300] [--rounds 3] [--tree DIR]

Generates (once) a LaSOT-format tree of 1280x720 JPEG frames: 2 classes x 3 sequences x 80
frames, each a textured background (smooth colour field, shapes, grain; JPEG quality 85) with
a moving target of sqrt(w*h) between 60 and 240 px, the range of most LaSOT targets. The
frames average ~89 KB, a little above LaSOT's own average (~250 GB for 3.52 M frames: ~71 KB); the
entropy decoding that DCT scaling cannot skip grows with the file size. Then,
for the default and the b256 preset, one process (= one data-loader worker) builds the same
training samples with `data.scaled_decode` false and true, alternating in rounds (the median
is printed; the machine may be shared), and compares the crops of both modes.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from seqtrack_mlflow.config import load_config  # noqa: E402
from seqtrack_mlflow.data.lasot import LasotDataset  # noqa: E402
from seqtrack_mlflow.data.sampler import TrainSamples  # noqa: E402
from seqtrack_mlflow.data.synthetic import cache_dir  # noqa: E402

SIZE = (1280, 720)
CLASSES = ("airplane", "bicycle")


def background(rng: np.random.Generator) -> np.ndarray:
    w, h = SIZE
    field = Image.fromarray((rng.random((9, 16, 3)) * 255).astype(np.uint8)).resize(SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(40):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, 120)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    grain = rng.normal(0, 3, (h, w, 3))
    img = np.clip(np.asarray(field, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.7)))


def make_tree(root: Path, frames: int = 80) -> Path:
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        for n in range(1, 4):
            seq = root / cls / f"{cls}-{n}"
            (seq / "img").mkdir(parents=True, exist_ok=True)
            bg = background(rng)
            side = float(rng.uniform(60, 240))
            aspect = float(rng.uniform(0.6, 1.6))
            tw, th = side * np.sqrt(aspect), side / np.sqrt(aspect)
            x0, y0 = rng.uniform(0, SIZE[0] - tw), rng.uniform(0, SIZE[1] - th)
            vx, vy = rng.uniform(-4, 4, size=2)
            colour = rng.integers(0, 256, 3).astype(np.uint8)
            lines = []
            for i in range(frames):
                x = float(np.clip(x0 + vx * i, 0, SIZE[0] - tw))
                y = float(np.clip(y0 + vy * i, 0, SIZE[1] - th))
                img = bg.copy()
                img[int(y):int(y + th), int(x):int(x + tw)] = colour
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "JPEG", quality=85)
                (seq / "img" / f"{i + 1:08d}.jpg").write_bytes(buf.getvalue())
                lines.append(f"{x:.1f},{y:.1f},{tw:.1f},{th:.1f}")
            (seq / "groundtruth.txt").write_text("\n".join(lines) + "\n")
            (seq / "full_occlusion.txt").write_text(",".join("0" * frames) + "\n")
            (seq / "out_of_view.txt").write_text(",".join("0" * frames) + "\n")
    (root / "done").write_text("")
    return root


def rate(ds: LasotDataset, cfg, samples: int) -> float:
    items = TrainSamples(ds, cfg, epoch=1)
    items[0]  # warm-up
    start = time.perf_counter()
    for i in range(1, samples + 1):
        items[i]
    return samples / (time.perf_counter() - start)


def crop_difference(ds: LasotDataset, cfgs: dict, samples: int) -> tuple[float, float]:
    """Mean and largest per-crop mean |full - scaled| in 0-255 grey levels over `samples`."""
    full, scaled = TrainSamples(ds, cfgs[False], epoch=1), TrainSamples(ds, cfgs[True], epoch=1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None] * 255
    diffs = []
    for i in range(samples):
        a, b = full[i], scaled[i]
        assert np.array_equal(a["box"].numpy(), b["box"].numpy()), "labels must not change"
        for key in ("templates", "search"):
            d = np.abs(a[key].numpy() - b[key].numpy()) * std  # undo the normalisation
            diffs.extend(d.reshape(-1, *d.shape[-3:]).mean(axis=(1, 2, 3)))
    return float(np.mean(diffs)), float(np.max(diffs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", default=str(cache_dir() / "bench-lasot-1280x720"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    root = make_tree(Path(args.tree))
    sizes = [p.stat().st_size for p in root.rglob("*.jpg")]
    print(f"tree: {root} ({time.perf_counter() - t0:.0f} s to make or find), {len(sizes)} frames "
          f"of 1280x720, {np.mean(sizes) / 1e3:.0f} KB on average")
    ds = LasotDataset(root, CLASSES)
    for preset in ("default", "seqtrack_b256"):
        base = load_config(REPO / "configs" / f"{preset}.yaml")
        cfgs = {flag: dataclasses.replace(base, data=dataclasses.replace(
            base.data, source="lasot", root=str(root), classes=CLASSES, scaled_decode=flag))
            for flag in (False, True)}
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for flag in (False, True):
                runs[flag].append(rate(ds, cfgs[flag], args.samples))
        full, scaled = statistics.median(runs[False]), statistics.median(runs[True])
        mean_diff, max_diff = crop_difference(ds, cfgs, 50)
        print(f"{preset}: full decoding {full:.1f} samples/s, scaled {scaled:.1f} samples/s per worker "
              f"(x{scaled / full:.2f}); crops differ by {mean_diff:.2f} grey levels on average, "
              f"{max_diff:.2f} at most (per-crop mean); rounds full {[round(r, 1) for r in runs[False]]} "
              f"scaled {[round(r, 1) for r in runs[True]]}")


if __name__ == "__main__":
    main()
