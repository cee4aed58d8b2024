"""DCT-scaled JPEG decoding: which scale is chosen, and crops within a stated tolerance of the
crops cut from the full decode (the window and so the labels are the same)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from seqtrack_mlflow.data import frames
from seqtrack_mlflow.data.frames import crop_scaled, decode_jpeg_bytes, decode_jpeg_scaled, needed_fraction
from seqtrack_mlflow.geometry import crop_image, target_window

# Tolerance, in grey levels (0-255), of a crop cut from a scaled decode against the same crop
# cut from the full decode, on textured 1280x720 scenes (grain sd 18: harsher than video).
# Measured (simplejpeg and Pillow alike): per-crop mean |difference| 1.86 on average and 4.85
# at most over these 120 windows.
# The scaled crop is the smoother one: the bilinear resize samples the full frame without
# antialiasing, the scaled IDCT averages. So it is also checked to be no farther than the full
# decode's own crop from an area-averaged (antialiased) reference crop.
MEAN_TOLERANCE = 3.0
CROP_TOLERANCE = 6.0


def scene(seed: int, size=(1280, 720), grain: float = 18.0) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray((rng.random((9, 16, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, 120)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + rng.normal(0, grain, (h, w, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_scale_choice():
    data = scene(0)
    assert decode_jpeg_scaled(data, 1.0)[1] == 1.0
    for fraction, scale, shape in ((0.6, 1.0, (720, 1280)), (0.5, 0.5, (360, 640)), (0.3, 0.5, (360, 640)),
                                   (0.2, 0.25, (180, 320)), (0.05, 0.125, (90, 160))):
        pixels, got = decode_jpeg_scaled(data, fraction)
        assert (got, pixels.shape[:2]) == (scale, shape), fraction
    small = scene(0, size=(320, 240))  # under SCALED_MIN_PIXELS: always full size, same pixels
    pixels, got = decode_jpeg_scaled(small, 0.1)
    assert got == 1.0 and np.array_equal(pixels, decode_jpeg_bytes(small))
    window = target_window(np.array([100.0, 100.0, 50.0, 200.0]), 4.0, 128)  # side 400
    assert needed_fraction([window]) == pytest.approx(128 / 400)
    assert needed_fraction([window, target_window(np.array([0, 0, 10.0, 10.0]), 2.0, 64)]) == 1.0


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_scaled_crops_stay_within_tolerance_of_full_decoding(decoder, monkeypatch):
    if decoder == "pillow":
        monkeypatch.setattr(frames, "simplejpeg", None)
    elif frames.simplejpeg is None:
        pytest.skip("simplejpeg not installed")
    rng = np.random.default_rng(1)
    diffs, full_err, scaled_err = [], [], []
    for seed in range(3):
        data = scene(seed)
        full = decode_jpeg_bytes(data)
        for _ in range(40):
            out = int(rng.choice([64, 128, 256]))
            side = float(rng.uniform(60, 1100))
            cx, cy = rng.uniform(0, 1280), rng.uniform(0, 720)
            window = target_window(np.array([cx - side / 8, cy - side / 8, side / 4, side / 4]), 4.0, out)
            pixels, scale = decode_jpeg_scaled(data, needed_fraction([window]))
            a = crop_image(full, window).astype(np.int16)
            b = crop_scaled(pixels, scale, window).astype(np.int16)
            diffs.append(np.abs(a - b).mean())
            x1, y1, x2, y2 = window.x1, window.y1, window.x1 + window.side, window.y1 + window.side
            if scale < 1 and x1 >= 0 and y1 >= 0 and x2 <= 1280 and y2 <= 720:
                ref = np.asarray(Image.fromarray(full).resize((out, out), Image.Resampling.BOX,
                                                              box=(x1, y1, x2, y2))).astype(np.int16)
                full_err.append(np.abs(a - ref).mean())
                scaled_err.append(np.abs(b - ref).mean())
    print(f"{decoder}: mean {np.mean(diffs):.2f} max {max(diffs):.2f}; vs area reference: full "
          f"{np.mean(full_err):.2f} scaled {np.mean(scaled_err):.2f} ({len(scaled_err)} windows)")
    assert np.mean(diffs) <= MEAN_TOLERANCE and max(diffs) <= CROP_TOLERANCE, (np.mean(diffs), max(diffs))
    assert len(scaled_err) >= 10 and np.mean(scaled_err) <= np.mean(full_err) + 0.1
