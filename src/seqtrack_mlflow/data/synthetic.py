"""Bundled sample data: a small procedural LaSOT-format tree (airplane, bicycle), made offline.

Why procedural: the real LaSOT classes are ~3 GB each; a tracker must still be trainable and
testable offline in minutes on a CPU. Each class gets 8 training and 2 held-out sequences of
120-180 frames at 320x240, written exactly like LaSOT (img/%08d.jpg, groundtruth.txt,
full_occlusion.txt, out_of_view.txt, nlp.txt), so the same reader, split and sampler run on it.

What a sequence holds (all drawn from numpy `Generator(PCG64([SAMPLE_SEED, class, n]))`):
- a textured background (airplane: sky with clouds; bicycle: street with buildings) under a
  slow camera pan;
- the target, whose look depends on the class (airplane: top-view plane that turns with its
  heading; bicycle: side-view two-wheeler facing its direction of motion), with a per-sequence
  colour, moving along smooth sums of sinusoids while its scale breathes (x0.7 .. x1.4);
- distractors (blobs and, in some sequences, a same-class look-alike in another colour);
- in about half of the sequences an occluder (cloud bank / pillar) that the target passes
  behind: frames where < 10 % of the target shows are flagged in full_occlusion.txt;
- in about half of the sequences an excursion out of the frame: frames where < 10 % of the
  target is inside are flagged in out_of_view.txt and annotated 0,0,0,0.
Boxes are the tight box of the target's pixels inside the frame (occluders ignored, so a
partly hidden target keeps its full box, as LaSOT annotates), 0-based, integer.

Sequence names follow protocol II so `lasot.py`'s built-in split applies unchanged: test =
airplane-1, airplane-9, bicycle-2, bicycle-7; train = the 8 smallest other numbers.

Byte-identical output for a given SAMPLE_VERSION: integer/elementwise numpy maths (no BLAS),
Pillow's integer rasteriser, baseline JPEG at fixed quality with 4:2:0 subsampling and no
metadata. Generated once into a cache folder, atomically (temp folder + rename).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from seqtrack_mlflow.data.lasot import PROTOCOL_II_TEST
from seqtrack_mlflow.errors import DataError
from seqtrack_mlflow.lasot_classes import SAMPLE_CLASSES

log = logging.getLogger(__name__)

SAMPLE_VERSION = 1
SAMPLE_SEED = 20230601  # fixed: the data must not change with the training seed
WIDTH, HEIGHT = 320, 240
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 2
MIN_FRAMES, MAX_FRAMES = 120, 180
JPEG_QUALITY = 90
MARKER = ".seqtrack-sample"  # written last inside the temp tree; its presence = complete tree
PAN = 40  # camera pan range (pixels) around the background centre
HIDDEN = 0.10  # a target with less than this fraction of its pixels showing is flagged


def cache_dir() -> Path:
    """$SEQTRACK_CACHE, else $XDG_CACHE_HOME/seqtrack_mlflow, else ~/.cache/seqtrack_mlflow."""
    env = os.environ.get("SEQTRACK_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "seqtrack_mlflow"


def default_sample_root() -> Path:
    return cache_dir() / f"sample-v{SAMPLE_VERSION}"


def sequence_names(class_name: str) -> tuple[list[int], list[int]]:
    """(train numbers, test numbers): the first two protocol-II test numbers of the class are
    held out; training takes the 8 smallest numbers not in the class's protocol-II test list."""
    test_all = PROTOCOL_II_TEST[class_name]
    test = list(test_all[:TEST_PER_CLASS])
    train = [n for n in range(1, 100) if n not in test_all][:TRAIN_PER_CLASS]
    return train, test


def ensure_sample_data(root: str | Path | None = None) -> Path:
    """The sample tree at `root` (default: the cache folder), generated if missing."""
    root = Path(root).expanduser() if root else default_sample_root()
    marker = root / MARKER
    if marker.is_file():
        found = marker.read_text().strip()
        if found != f"sample-v{SAMPLE_VERSION}":
            raise DataError(f"{marker}: holds {found!r}, this code writes sample-v{SAMPLE_VERSION}; "
                            f"delete {root} or choose another data.root")
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: folder exists but is not a complete sample tree (no {MARKER}); "
                        "delete it or choose another data.root")
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write_sample_tree(tmp)
        (tmp / MARKER).write_text(f"sample-v{SAMPLE_VERSION}\n")
    except BaseException:  # incl. Ctrl-C: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if root.exists():
            root.rmdir()  # an empty folder (e.g. made by the user) is replaced
        os.rename(tmp, root)  # atomic: a killed generation leaves only a .tmp- folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (root / MARKER).is_file():  # another process finished first
            return root
        raise
    log.info("generated sample data in %s (%.1f s)", root, time.perf_counter() - t0)
    return root


def write_sample_tree(root: str | Path) -> Path:
    """Write every sample sequence under `root` (which must exist or be creatable)."""
    root = Path(root)
    for ci, cls in enumerate(SAMPLE_CLASSES):
        train, test = sequence_names(cls)
        for i, n in enumerate(sorted(train + test)):
            # events by position, so every class (and the held-out set) has both kinds
            write_sequence(root / cls / f"{cls}-{n}", cls, np.random.Generator(
                np.random.PCG64([SAMPLE_SEED, SAMPLE_VERSION, ci, n])),
                leaves_frame=i % 2 == 0, occluder=i % 2 == 1 or i % 3 == 0)
    return root


def tree_sha256(root: str | Path, classes: tuple[str, ...] = SAMPLE_CLASSES) -> str:
    """sha256 over (relative path, content) of every file in the class folders, in sorted order,
    where a JPEG's content is its decoded pixels: the encoder's bytes may change with the JPEG
    library bundled with Pillow, the pixels the trainer reads must not."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for cls in classes for p in (root / cls).rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        if p.suffix == ".jpg":
            with Image.open(p) as im:
                content = np.asarray(im.convert("RGB")).tobytes()
        else:
            content = p.read_bytes()
        h.update(hashlib.sha256(content).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# drawing helpers (all deterministic: integer rasterisation, elementwise float64 maths)

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float64 in [0, 1]: value noise on a `cell`-pixel grid, smoothstep-interpolated."""
    grid = rng.random((h // cell + 2, w // cell + 2))
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, cls: str) -> np.ndarray:
    """(HEIGHT + 2 PAN, WIDTH + 2 PAN, 3) uint8 scene the camera pans over."""
    h, w = HEIGHT + 2 * PAN, WIDTH + 2 * PAN
    ramp = (np.arange(h, dtype=np.float64) / (h - 1))[:, None, None]
    if cls == "airplane":  # sky: blue gradient with soft clouds
        top = np.array([50, 95, 170]) + rng.integers(-20, 21, 3)
        bottom = np.array([150, 185, 230]) + rng.integers(-20, 21, 3)
        sky = top * (1 - ramp) + bottom * ramp
        n = 0.6 * _smooth_noise(rng, h, w, 64) + 0.4 * _smooth_noise(rng, h, w, 20)
        cover = np.clip((n - 0.5) * 3.0, 0, 1)[:, :, None]
        img = sky * (1 - cover) + np.array([236, 238, 244]) * cover
    else:  # street: buildings over a road, with texture
        horizon = int(h * rng.uniform(0.4, 0.55))
        img = np.empty((h, w, 3))
        img[:horizon] = np.array([120, 140, 160]) + rng.integers(-25, 26, 3)
        img[horizon:] = np.array([105, 105, 100]) + rng.integers(-20, 21, 3)
        x = 0
        while x < w:  # building facades of random width, height and colour
            bw = int(rng.integers(30, 90))
            top = int(rng.integers(10, max(11, horizon - 20)))
            img[top:horizon, x:x + bw] = rng.integers(60, 200, 3)
            x += bw + int(rng.integers(0, 12))
        img[horizon:horizon + 6] = np.array([80, 120, 70])  # kerb / grass strip
        img = img * (0.8 + 0.4 * _smooth_noise(rng, h, w, 24))[:, :, None]
    img = img + rng.integers(-7, 8, (h, w, 3))
    return _to_u8(img)


def _smooth_path(rng: np.random.Generator, n: int, centre: float, amp: float) -> np.ndarray:
    """centre + two sinusoids of random period (0.5..1.5 n and 0.2..0.5 n), (n,) float64."""
    t = np.arange(n, dtype=np.float64)
    a1, a2 = amp * rng.uniform(0.5, 1.0), amp * rng.uniform(0.1, 0.3)
    p1, p2 = n * rng.uniform(0.5, 1.5), n * rng.uniform(0.2, 0.5)
    f1, f2 = rng.uniform(0, 2 * math.pi, 2)
    return centre + a1 * np.sin(2 * math.pi * t / p1 + f1) + a2 * np.sin(2 * math.pi * t / p2 + f2)


def _bump(n: int, start: int, plateau: int, ramp: int) -> np.ndarray:
    """0 -> 1 -> 0 with cosine ramps of `ramp` frames around a plateau [start, start+plateau)."""
    t = np.arange(n, dtype=np.float64)
    x = np.minimum((t - (start - ramp)) / ramp, ((start + plateau + ramp) - t) / ramp)
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(math.pi * x)


# Shapes in unit coordinates (x forward, y down), drawn scaled by L pixels.
_PLANE_BODY = [(0.5, 0), (0.42, -0.06), (-0.45, -0.06), (-0.5, 0), (-0.45, 0.06), (0.42, 0.06)]
_PLANE_WING = [(0.14, -0.05), (-0.12, -0.5), (-0.22, -0.5), (-0.08, -0.05)]
_PLANE_TAIL = [(-0.34, -0.05), (-0.46, -0.2), (-0.52, -0.2), (-0.5, -0.05)]
_BIKE_WHEELS = [(-0.3, 0.12), (0.3, 0.12)]
_BIKE_FRAME = [((-0.3, 0.12), (-0.02, 0.14)), ((-0.3, 0.12), (-0.1, -0.18)),
               ((-0.1, -0.18), (-0.02, 0.14)), ((-0.1, -0.18), (0.2, -0.18)),
               ((0.2, -0.18), (-0.02, 0.14)), ((0.2, -0.18), (0.3, 0.12)),
               ((0.2, -0.18), (0.18, -0.28)), ((0.16, -0.28), (0.27, -0.28)),
               ((-0.17, -0.22), (-0.04, -0.22))]


def _mirror(poly):
    return [(x, -y) for x, y in poly]


def _draw_shape(cls: str, size: float, angle: float, facing: int, body, accent
                ) -> tuple[Image.Image, Image.Image, int]:
    """Render a target on its own patch: (RGB patch, L mask, half side). Centre = patch centre."""
    half = int(math.ceil(0.62 * size)) + 3
    side = 2 * half + 1
    patch = Image.new("RGB", (side, side))
    mask = Image.new("L", (side, side))
    dp, dm = ImageDraw.Draw(patch), ImageDraw.Draw(mask)
    if cls == "airplane":
        ca, sa = math.cos(angle), math.sin(angle)

        def tr(poly):
            return [(half + size * (x * ca - y * sa), half + size * (x * sa + y * ca)) for x, y in poly]
        for poly, colour in ((_PLANE_WING, body), (_mirror(_PLANE_WING), body), (_PLANE_BODY, body),
                             (_PLANE_TAIL, accent), (_mirror(_PLANE_TAIL), accent)):
            dp.polygon(tr(poly), fill=tuple(colour))
            dm.polygon(tr(poly), fill=255)
        nose = tr([(0.3, -0.03), (0.44, 0), (0.3, 0.03)])
        dp.polygon(nose, fill=tuple(accent))
    else:
        def tp(p):
            return (half + size * p[0] * facing, half + size * p[1])
        lw = max(2, int(round(0.05 * size)))
        r = 0.2 * size
        for cx, cy in _BIKE_WHEELS:
            x, y = tp((cx, cy))
            box = (x - r, y - r, x + r, y + r)
            dp.ellipse(box, outline=(25, 25, 25), width=lw + 1)
            dm.ellipse(box, outline=255, width=lw + 1)
        for a, b in _BIKE_FRAME:
            dp.line([tp(a), tp(b)], fill=tuple(body), width=lw)
            dm.line([tp(a), tp(b)], fill=255, width=lw)
        x, y = tp((-0.02, 0.14))
        dp.ellipse((x - lw, y - lw, x + lw, y + lw), fill=tuple(accent))
        dm.ellipse((x - lw, y - lw, x + lw, y + lw), fill=255)
    return patch, mask, half


_PLANE_COLOURS = [(236, 236, 242), (205, 45, 40), (250, 200, 40), (60, 70, 80), (240, 120, 30)]
_BIKE_COLOURS = [(25, 70, 210), (210, 30, 30), (20, 160, 70), (240, 200, 20), (150, 40, 170)]


def write_sequence(path: Path, cls: str, rng: np.random.Generator, leaves_frame: bool,
                   occluder: bool) -> None:
    """Render one sequence into `path` (LaSOT layout), optionally with an excursion out of
    the frame and/or an occluder the target passes behind. One function on purpose: its random
    draws happen in one fixed order, and that order defines the bundled data (tree_sha256)."""
    n = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    bg = _background(rng, cls)
    palette = _PLANE_COLOURS if cls == "airplane" else _BIKE_COLOURS
    ci = int(rng.integers(len(palette)))
    body = np.array(palette[ci])
    accent = np.array(palette[(ci + 1 + int(rng.integers(len(palette) - 1))) % len(palette)])
    body = np.clip(body + rng.integers(-15, 16, 3), 0, 255)

    # camera pan (integer offsets into the background) and target path in frame pixels
    pan_x = np.rint(PAN + PAN * 0.9 * np.sin(2 * math.pi * np.arange(n) / (n * rng.uniform(1, 2))
                                              + rng.uniform(0, 2 * math.pi))).astype(np.int64)
    pan_y = np.rint(PAN + PAN * 0.5 * np.sin(2 * math.pi * np.arange(n) / (n * rng.uniform(1, 2))
                                              + rng.uniform(0, 2 * math.pi))).astype(np.int64)
    cx = _smooth_path(rng, n, WIDTH / 2, 0.3 * WIDTH)
    cy = _smooth_path(rng, n, HEIGHT / 2, 0.25 * HEIGHT)
    base = rng.uniform(38, 62) if cls == "airplane" else rng.uniform(55, 85)
    size = base * np.exp(0.35 * np.sin(2 * math.pi * np.arange(n) / (n * rng.uniform(0.4, 1.0))
                                       + rng.uniform(0, 2 * math.pi)))
    # out-of-view excursion across the nearer side edge
    oov = None
    if leaves_frame:
        plateau, ramp = int(rng.integers(8, 17)), 10
        start = int(rng.integers(int(0.2 * n) + ramp, int(0.85 * n) - plateau - ramp))
        sign = 1.0 if cx[start] >= WIDTH / 2 else -1.0
        cx = cx + sign * WIDTH * _bump(n, start, plateau, ramp)
        oov = (start - ramp, start + plateau + ramp)
    # heading of the airplane follows the velocity; the bicycle faces its direction of motion
    vx, vy = np.gradient(cx), np.gradient(cy)
    angle = np.arctan2(vy, vx)
    facing = np.where(vx >= 0, 1, -1)
    # an occluder the target passes behind at frame tc (outside the out-of-view excursion)
    occ = None
    if occluder:
        # crossing time: the fastest horizontal motion away from the excursion, so the target
        # really passes behind (a long full occlusion would only waste frames)
        frames = np.arange(n)
        ok = (frames >= 0.2 * n) & (frames <= 0.8 * n)
        if oov is not None:
            ok &= (frames < oov[0] - 15) | (frames > oov[1] + 15)
        tc = int(np.argmax(np.where(ok, np.abs(vx), -1.0)))
        # just wider than the target, drifting against its motion
        width = int(1.15 * size[tc]) + 8
        drift = -4.0 if vx[tc] >= 0 else 4.0  # px / frame in frame coordinates
        occ_x = cx[tc] + drift * (np.arange(n) - tc)  # (n,) centre in frame pixels
        occ = (occ_x, width)
    # distractors: blobs with their own paths; sometimes a look-alike of the target class
    blobs = []
    for _ in range(int(rng.integers(2, 6))):
        near = np.array(palette[int(rng.integers(len(palette)))]) + rng.integers(-30, 31, 3)
        colour = tuple(int(v) for v in near.clip(0, 255))
        blobs.append((_smooth_path(rng, n, rng.uniform(0, WIDTH), 0.4 * WIDTH),
                      _smooth_path(rng, n, rng.uniform(0, HEIGHT), 0.3 * HEIGHT),
                      rng.uniform(8, 30), rng.uniform(6, 24), colour, bool(rng.random() < 0.5)))
    lookalike = None
    if rng.random() < 0.35:
        lc = (ci + 2) % len(palette)
        lx = _smooth_path(rng, n, rng.uniform(0, WIDTH), 0.35 * WIDTH)
        ly = _smooth_path(rng, n, rng.uniform(0, HEIGHT), 0.3 * HEIGHT)
        lvx, lvy = np.gradient(lx), np.gradient(ly)
        lookalike = (lx, ly, np.arctan2(lvy, lvx), np.where(lvx >= 0, 1, -1), rng.uniform(0.55, 0.8),
                     np.array(palette[lc]), np.array(palette[(lc + 1) % len(palette)]))

    img_dir = path / "img"
    img_dir.mkdir(parents=True)
    boxes, occluded, out_of_view = [], [], []
    for t in range(n):
        ox, oy = int(pan_x[t]), int(pan_y[t])
        frame = Image.fromarray(bg[oy:oy + HEIGHT, ox:ox + WIDTH])
        draw = ImageDraw.Draw(frame)
        for bx, by, rw, rh, colour, is_rect in blobs:
            shape = (bx[t] - rw, by[t] - rh, bx[t] + rw, by[t] + rh)
            (draw.rectangle if is_rect else draw.ellipse)(shape, fill=colour)
        if lookalike is not None:
            lx, ly, langle, lfacing, scale, lbody, laccent = lookalike
            lpatch, lmask, lhalf = _draw_shape(cls, scale * size[t], float(langle[t]), int(lfacing[t]),
                                               lbody, laccent)
            frame.paste(lpatch, (int(round(lx[t])) - lhalf, int(round(ly[t])) - lhalf), lmask)
        patch, mask, half = _draw_shape(cls, float(size[t]), float(angle[t]), int(facing[t]), body, accent)
        x0, y0 = int(round(cx[t])) - half, int(round(cy[t])) - half
        frame.paste(patch, (x0, y0), mask)
        m = np.asarray(mask) > 0
        total = int(m.sum())
        # the part of the target's mask inside the frame
        fx0, fy0 = max(x0, 0), max(y0, 0)
        fx1, fy1 = min(x0 + m.shape[1], WIDTH), min(y0 + m.shape[0], HEIGHT)
        inside = m[fy0 - y0:max(fy1 - y0, fy0 - y0), fx0 - x0:max(fx1 - x0, fx0 - x0)]
        shown = int(inside.sum())
        hidden_by_occ = 0
        if occ is not None:
            ocx = float(occ[0][t])
            ol, orr = int(round(ocx - occ[1] / 2)), int(round(ocx + occ[1] / 2))
            occ_mask = Image.new("L", (WIDTH, HEIGHT))
            if cls == "bicycle":  # a pillar: full height, bark-like stripes
                draw.rectangle((ol, 0, orr, HEIGHT), fill=(95, 70, 45))
                for sx in range(ol + 4, orr, 9):
                    draw.line([(sx, 0), (sx, HEIGHT)], fill=(70, 50, 30), width=2)
                ImageDraw.Draw(occ_mask).rectangle((ol, 0, orr, HEIGHT), fill=255)
            else:  # a tall cloud bank with rounded ends
                shape = (ol, 25, orr, HEIGHT - 25)
                draw.rounded_rectangle(shape, radius=occ[1] // 2, fill=(238, 240, 246))
                ImageDraw.Draw(occ_mask).rounded_rectangle(shape, radius=occ[1] // 2, fill=255)
            if inside.size:
                covered = np.asarray(occ_mask)[fy0:fy1, fx0:fx1] > 0
                hidden_by_occ = int((inside & covered).sum())
        if shown < HIDDEN * total:
            boxes.append((0, 0, 0, 0))
            out_of_view.append(1)
            occluded.append(0)
        else:
            ys, xs = np.nonzero(inside)
            boxes.append((fx0 + int(xs.min()), fy0 + int(ys.min()),
                          int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1))
            out_of_view.append(0)
            occluded.append(int(shown - hidden_by_occ < HIDDEN * total))
        buf = io.BytesIO()
        frame.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False, progressive=False)
        (img_dir / f"{t + 1:08d}.jpg").write_bytes(buf.getvalue())
    (path / "groundtruth.txt").write_text("\n".join("%d,%d,%d,%d" % b for b in boxes) + "\n")
    (path / "full_occlusion.txt").write_text(",".join(map(str, occluded)))
    (path / "out_of_view.txt").write_text(",".join(map(str, out_of_view)))
    colour = "white" if body.mean() > 200 else "coloured"
    what = "airplane flying in the sky" if cls == "airplane" else "bicycle moving along the street"
    (path / "nlp.txt").write_text(f"{colour} {what}\n")
