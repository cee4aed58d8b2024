"""Data pipeline throughput for the default config (single process), and the choices behind it.

    python benchmarks/data_pipeline.py [--samples 400] [--config configs/default.yaml]

Prints: training samples/s and the share of time spent decoding JPEGs; Pillow vs simplejpeg
decode time; what a per-worker LRU frame cache would save (its hit rate under the official
random sampling); reading annotations with numpy vs loading the Arrow frame index.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqtrack_mlflow.config import load_config  # noqa: E402
from seqtrack_mlflow.data import frames as frames_mod  # noqa: E402
from seqtrack_mlflow.data import sampler as sampler_mod  # noqa: E402
from seqtrack_mlflow.data.lasot import LasotDataset  # noqa: E402
from seqtrack_mlflow.data.synthetic import ensure_sample_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    cfg = load_config(args.config)
    root = ensure_sample_data(cfg.data.root or None)

    t0 = time.perf_counter()
    ds = LasotDataset(root, cfg.data.classes)
    t_read = time.perf_counter() - t0

    # 1. samples/s with decode time measured inside the pipeline
    decode_time = [0.0]
    decoded = [0]
    real_read = sampler_mod.read_frame_scaled

    def timed_read(path, need):
        t = time.perf_counter()
        out = real_read(path, need)
        decode_time[0] += time.perf_counter() - t
        decoded[0] += 1
        return out

    sampler_mod.read_frame_scaled = timed_read
    samples = sampler_mod.TrainSamples(ds, cfg, epoch=0)
    samples[0]  # warm-up
    decode_time[0], decoded[0] = 0.0, 0
    t0 = time.perf_counter()
    for i in range(args.samples):
        samples[i]
    total = time.perf_counter() - t0
    sampler_mod.read_frame_scaled = real_read
    print(f"config: {args.config or 'configs/default.yaml'}; data: {root}")
    print(f"training samples/s (1 process): {args.samples / total:8.1f}   "
          f"({total / args.samples * 1e3:.2f} ms/sample, "
          f"{decoded[0] / args.samples:.2f} frames decoded/sample)")
    print(f"decode share: {decode_time[0] / total:6.1%}   ({decode_time[0] / decoded[0] * 1e3:.2f} ms/frame)")

    val = sampler_mod.ValidationSamples(ds, cfg)
    t0 = time.perf_counter()
    for i in range(len(val)):
        val[i]
    print(f"validation samples/s (first pass, then cached): {len(val) / (time.perf_counter() - t0):8.1f}")

    # 2. decoder choice
    paths = [s.frame_path(i) for s in ds.train[:4] for i in range(0, len(s), 10)]
    blobs = [p.read_bytes() for p in paths]
    t0 = time.perf_counter()
    for b in blobs:
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    t_pil = (time.perf_counter() - t0) / len(blobs)
    t0 = time.perf_counter()
    for b in blobs:
        frames_mod.decode_jpeg_bytes(b)
    t_sj = (time.perf_counter() - t0) / len(blobs)
    print(f"decode 320x240: Pillow {t_pil * 1e3:.3f} ms, project decoder "
          f"({'simplejpeg' if frames_mod.simplejpeg else 'Pillow'}) {t_sj * 1e3:.3f} ms "
          f"-> x{t_pil / t_sj:.2f}")

    # 3. would a per-worker LRU cache of decoded frames help? hit rate under random sampling
    for capacity in (64, 256, 1024):
        cache: OrderedDict = OrderedDict()
        hits = lookups = 0
        for i in range(2000):
            pick = samples.pick_frames(sampler_mod.sample_rng(cfg.seed, 0, i))
            for f in {*pick.templates, pick.search}:
                key = (pick.sequence, f)
                lookups += 1
                if key in cache:
                    hits += 1
                    cache.move_to_end(key)
                else:
                    cache[key] = True
                    if len(cache) > capacity:
                        cache.popitem(last=False)
        mb = capacity * 320 * 240 * 3 / 2**20
        print(f"LRU frame cache of {capacity:5d} frames ({mb:6.0f} MB/worker): "
              f"hit rate {hits / lookups:5.1%} "
              f"-> saves at most {hits / lookups * decode_time[0] / total:5.1%} of sample time")

    # 4. annotations: numpy reader vs Arrow frame index
    t0 = time.perf_counter()
    import datasets  # noqa: F401  (what the index costs a process on first use)
    t_import = time.perf_counter() - t0
    from seqtrack_mlflow.data.index import frame_index
    frame_index(ds)  # build or reuse
    t0 = time.perf_counter()
    index = frame_index(ds)
    vis = np.asarray(index.with_format("numpy")["visible"])
    t_index = time.perf_counter() - t0
    print(f"annotations: LasotDataset read {t_read * 1e3:.1f} ms; frame index load+column "
          f"{t_index * 1e3:.1f} ms (+ import datasets {t_import * 1e3:.0f} ms once); {len(vis)} rows")


if __name__ == "__main__":
    main()
