"""JPEG decoding of frames, with errors that name the file.

simplejpeg (libjpeg-turbo) is used when installed: measured here 2.2x faster than Pillow
(320x240: 0.31 vs 0.70 ms; 1280x720: 4.3 vs 9.9 ms) and bit-identical to Pillow's output with
its default (accurate) DCT and upsampling. Pillow is the fallback.

Scaled decoding (`read_frame_scaled`): a 1280x720 LaSOT frame is cropped to 64-256 px squares
whose side in the frame is usually several hundred pixels, so most decoded pixels are thrown
away by the resize. libjpeg can decode straight to 1/2, 1/4 or 1/8 of the size (DCT scaling:
each 8x8 block's inverse DCT is computed at 4x4, 2x2 or 1x1), cheaper than a full decode (the
entropy decoding stays: ~1.9x at 1/4 on a 72 KB 1280x720 frame). A frame is decoded at the
smallest such size that still gives every crop taken from it at least one decoded pixel per
output pixel; the crop is then cut from the smaller image with the same window scaled by
the same factor (pixel centres map exactly: output pixel j of a 1/k decode covers input pixels
[kj, k(j+1))). The crop differs from one cut from the full decode only by the low-pass of
the scaled IDCT (the bilinear resize samples the full image without antialiasing); the
difference is bounded in tests/test_data_frames.py and measured in
benchmarks/real_frames.py. Pillow's `draft` does the same when simplejpeg is missing.
"""

from __future__ import annotations

import io
import math
import os
import stat
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from seqtrack_mlflow.errors import DataError
from seqtrack_mlflow.geometry import crop_image

try:  # optional accelerator; same pixels as Pillow
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None


# Pillow's own bound (Image.MAX_IMAGE_PIXELS, 89,478,485 = 256 MiB of RGB): a larger frame is a
# decompression bomb, not a video frame (LaSOT's largest are 1920x1080 = 2.1 M pixels). Checked
# from the header, before any pixel is decoded.
MAX_FRAME_PIXELS = 89_478_485


# Most bytes a frame file may have, checked from its size before anything is read: LaSOT's
# frames are under 1 MB; 64 MiB is a generous bound for any JPEG within MAX_FRAME_PIXELS.
MAX_FRAME_BYTES = 64 << 20


def read_frame_bytes(path: str | Path, limit: int = MAX_FRAME_BYTES) -> bytes:
    """The bytes of a frame file: a regular file (a FIFO, device, socket or folder is refused
    before any read: opening with O_NONBLOCK never waits for a FIFO's writer) of at most `limit`
    bytes. DataError names the file and the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DataError(f"{path}: cannot read frame ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file; a frame must be a JPEG file")
        if info.st_size > limit:
            raise DataError(f"{path}: {info.st_size} bytes is larger than the limit of {limit} bytes "
                            "(MAX_FRAME_BYTES) for a frame")
        chunks, left = [], limit + 1  # a file that grows while being read stops at the bound too
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise DataError(f"{path}: larger than the limit of {limit} bytes (MAX_FRAME_BYTES) for a frame")
        return data
    except OSError as exc:
        raise DataError(f"{path}: cannot read frame ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _check_pixels(width: int, height: int, source: str | Path) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise DataError(f"{source}: frame of {width}x{height} = {width * height:,} pixels is larger than "
                        f"the limit of {MAX_FRAME_PIXELS:,} (MAX_FRAME_PIXELS); refusing to decode it")


def decode_jpeg_bytes(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB. Raises DataError naming `source`."""
    if simplejpeg is not None:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            _check_pixels(width, height, source)
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError as exc:
            raise DataError(f"{source}: unreadable JPEG ({exc})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img.width, img.height, source)
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{source}: unreadable JPEG ({exc})") from None


SCALED_MIN_PIXELS = 640 * 480
"""Smaller frames are always decoded full size: a 320x240 frame decodes in ~0.3 ms, so there is
nothing to win, and the bundled sample's crops (and the reference numbers measured on them)
stay exactly those of full decoding."""


def _power_of_two_reduction(min_fraction: float) -> int:
    """The largest k in 8, 4, 2, 1 with 1/k >= min_fraction. libjpeg-turbo also decodes at 3/8,
    5/8, ...; measured here those odd sizes are slower than the next power of two (1280x720:
    3/8 took longer than 1/2), so only 1/2, 1/4 and 1/8 are used."""
    for k in (8, 4, 2):
        if 1.0 / k >= min_fraction:
            return k
    return 1


def decode_jpeg_scaled(data: bytes, min_fraction: float, source: str | Path = "<bytes>"
                       ) -> tuple[np.ndarray, float]:
    """JPEG bytes -> ((h, w, 3) uint8 RGB, scale): decoded at the smallest DCT scale `scale`
    (decoded / full size: 1/2, 1/4 or 1/8) that is >= `min_fraction`; 1.0 = full size (also
    for frames under SCALED_MIN_PIXELS)."""
    if min_fraction >= 1.0:
        return decode_jpeg_bytes(data, source), 1.0
    if simplejpeg is not None:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            if width * height < SCALED_MIN_PIXELS:
                return decode_jpeg_bytes(data, source), 1.0
            k = _power_of_two_reduction(min_fraction)
            if k == 1:
                return decode_jpeg_bytes(data, source), 1.0
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=math.ceil(width / k),
                                            min_height=math.ceil(height / k))
        except ValueError as exc:
            raise DataError(f"{source}: unreadable JPEG ({exc})") from None
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                k = _power_of_two_reduction(min_fraction)
                if width * height >= SCALED_MIN_PIXELS and k > 1:
                    img.draft("RGB", (math.ceil(width / k), math.ceil(height / k)))
                pixels = np.asarray(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{source}: unreadable JPEG ({exc})") from None
    # the 1/k that gave this width (ceil(width / k) == decoded width)
    scale = 1.0 / round(width / pixels.shape[1]) if pixels.shape[1] < width else 1.0
    return pixels, scale


def read_frame_scaled(path: str | Path, min_fraction: float) -> tuple[np.ndarray, float]:
    """`read_frame`, decoded at the smallest DCT scale >= min_fraction (see the module doc)."""
    return decode_jpeg_scaled(read_frame_bytes(path), min_fraction, path)


def needed_fraction(windows) -> float:
    """The smallest decode scale that keeps every crop window at >= 1 decoded pixel per output
    pixel: max of output_size / side over the windows (capped at 1)."""
    return min(1.0, max(w.output_size / w.side for w in windows))


def crop_scaled(pixels: np.ndarray | Image.Image, scale: float, window) -> np.ndarray:
    """`geometry.crop_image(full_frame, window)` computed from a frame decoded at `scale` (an
    array or the same as a PIL image): the same square, zero outside the image, bilinear, with
    the window's corners scaled."""
    return crop_image(pixels, window, scale)


def read_frame(path: str | Path) -> np.ndarray:
    """Decode one frame file to (H, W, 3) uint8 RGB; DataError names the file."""
    return decode_jpeg_bytes(read_frame_bytes(path), path)


class FrameCache:
    """Decoded frames kept in memory, least recently used out first, at most `max_bytes` of
    pixels (0 = keep nothing). A training epoch draws each of the sample data's ~2,300 training
    frames ~15 times at 7000 samples, and decoding is half of a sample's cost, so the data
    loader reads most frames from here. A hit gives exactly what decoding gives (the key holds
    the decode scale), so a sample never depends on the cache; arrays are read-only, and
    scaled reads come as PIL images, which the crops resample without another copy. Each
    loading process (the data worker, or the training process with workers=0) has its own."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple, tuple[np.ndarray | Image.Image, float, int]] = OrderedDict()
        self.bytes = 0
        self.full_size_only: set[str] = set()  # frames under SCALED_MIN_PIXELS: one decode for every scale
        self.hits = self.misses = 0

    def read(self, path: str | Path) -> np.ndarray:
        """`read_frame`: (H, W, 3) uint8, read-only when it is kept."""
        key = (str(path), 1, "array")
        if (item := self._get(key)) is not None:
            return item[0]
        pixels = read_frame(path)
        pixels.flags.writeable = False  # shared by every sample that reads this frame
        return self._put(key, pixels, 1.0, pixels.nbytes)[0]

    def read_scaled(self, path: str | Path, min_fraction: float) -> tuple[Image.Image, float]:
        """`read_frame_scaled` as (PIL image, scale), for `crop_scaled`."""
        path = str(path)
        k = 1 if min_fraction >= 1.0 or path in self.full_size_only else _power_of_two_reduction(min_fraction)
        if (item := self._get((path, k, "image"))) is not None:
            return item[0], item[1]
        pixels, scale = read_frame_scaled(path, 1.0 if k == 1 else min_fraction)
        if scale == 1.0 and k != 1:  # a small frame: decoded full size whatever the scale asked
            self.full_size_only.add(path)
            k = 1
        image = Image.fromarray(pixels)
        item = self._put((path, k, "image"), image, scale, image.width * image.height * 4)  # 4 bytes a pixel inside PIL
        return item[0], item[1]

    def _get(self, key: tuple):
        item = self.items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self.items.move_to_end(key)
        return item

    def _put(self, key: tuple, value, scale: float, nbytes: int):
        item = (value, scale, nbytes)
        if 0 < nbytes <= self.max_bytes:
            self.items[key] = item
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                _, (_, _, old) = self.items.popitem(last=False)
                self.bytes -= old
        return item
