"""The MLflow pyfunc of a trained SeqTrack: frames + the first frame's box -> one box per frame.

This file is an MLflow "model from code": `mlflow.pyfunc.log_model(python_model=<this file>)`
copies it into every logged model and `mlflow.pyfunc.load_model` runs it, so nothing is
pickled (it loads with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false). The weights are the
artifact `model/` (`config.json` + `model.safetensors`, the layout of `SeqTrack.from_pretrained`
and of the Hub mirror); the tracker settings (`track` section) are the model config.

Input (see `tracking_input`): a DataFrame, one row per frame, in order:
- `frame`: a file path (JPEG), a `data:image/jpeg;base64,...` string, or an (H, W, 3) uint8 RGB
  array;
- `x`, `y`, `w`, `h`: the target box of the FIRST row (pixels, top-left x/y); later rows are
  ignored (null, NaN or empty CSV cells are fine).
The signature types `frame` as a string column, so `mlflow models serve` takes CSV and JSON
bodies of paths or data URIs; in Python, `predict` also takes arrays in that column.
Output: a DataFrame with `x`, `y`, `w`, `h` per frame; row 0 is the given box (LaSOT convention).

Frame paths are read only where the operator allows (docs/models.md): a model served by
`mlflow models serve` reads no path at all unless the model config key `frame_roots` (a list of
folders: given at load, or to the server as SERVING_MODEL_CONFIG='{"frame_roots": ["/data"]}')
or the environment variable SEQTRACK_FRAME_ROOTS (folders separated by ':') names them; a model loaded
in the user's own process reads any path unless roots are given. Only regular files under a root
(after symlinks are resolved) of at most MAX_FRAME_BYTES are read. Every refusal of a path reads
the same ("frame N: not an allowed frame file"), so a client learns nothing about which files
exist, and predict raises an MlflowException with one line (the scoring server then replies
without a stack trace).
The seqtrack_mlflow package must be installed where the model is loaded (it holds the network).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np

BOX_COLUMNS = ("x", "y", "w", "h")
WEIGHTS_ARTIFACT = "model"  # artifact key: the folder with config.json + model.safetensors
_DATA_URI = "data:image/"
FRAME_ROOTS_KEY = "frame_roots"  # model config key: folders whose files a served model may read
FRAME_ROOTS_ENV = "SEQTRACK_FRAME_ROOTS"  # the same, ':'-separated, for the operator's environment
# Set by `mlflow models serve`'s scoring server before it answers any request.
_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"
REFUSED_PATH = "not an allowed frame file (served models read data URIs and arrays; paths only under frame_roots)"


class FrameRefused(Exception):
    """A frame path that may not be read; its message never says why (existence, type, size)."""


def tracking_input(frames: list[Any], box: Any):
    """The pyfunc input for `frames` (paths, data URIs or arrays) and the first frame's box."""
    import pandas as pd

    box = [float(v) for v in box]
    if len(box) != 4:
        raise ValueError(f"box must be x, y, w, h; got {box}")
    frame = pd.DataFrame({"frame": [f if isinstance(f, np.ndarray) else str(f) for f in frames]})
    # Object columns, so the later rows' missing boxes stay None: JSON null in the input
    # examples MLflow writes (a float column would hold NaN, which strict JSON rejects).
    for i, column in enumerate(BOX_COLUMNS):
        frame[column] = pd.Series([box[i]] + [None] * (len(frames) - 1), dtype=object)
    return frame


def jpeg_data_uri(data: bytes) -> str:
    """JPEG bytes as a data URI: an input example that does not depend on local paths."""
    return _DATA_URI + "jpeg;base64," + base64.b64encode(data).decode("ascii")


def frame_roots(model_config: dict | None = None) -> list[Path] | None:
    """The folders frame paths may be read from: the model config's `frame_roots` plus
    SEQTRACK_FRAME_ROOTS, resolved. None = any path (a model in the user's own process, no
    roots given); [] = no path (a served model without roots)."""
    given = (model_config or {}).get(FRAME_ROOTS_KEY) or []
    if isinstance(given, str):
        given = given.split(os.pathsep)
    if not isinstance(given, (list, tuple)) or not all(isinstance(g, str) for g in given):
        from seqtrack_mlflow.errors import ConfigError
        raise ConfigError(f"{FRAME_ROOTS_KEY}: give a list of folders")
    given = [*given, *os.environ.get(FRAME_ROOTS_ENV, "").split(os.pathsep)]
    roots = [Path(os.path.realpath(os.path.expanduser(g))) for g in given if g.strip()]
    if roots:
        return roots
    return [] if os.environ.get(_SERVING_ENV, "").lower() == "true" else None


def _allowed_path(text: str, roots: list[Path] | None) -> Path:
    """The real path of `text` if it lies under one of `roots` (None = anywhere); else FrameRefused."""
    if roots is not None and not roots:
        raise FrameRefused(REFUSED_PATH)
    if "\0" in text:
        raise FrameRefused(REFUSED_PATH)
    real = Path(os.path.realpath(os.path.expanduser(text)))
    if roots is not None and not any(real.is_relative_to(root) for root in roots):
        raise FrameRefused(REFUSED_PATH)
    return real


def decode_frame(value: Any, roots: list[Path] | None = None) -> np.ndarray:
    """One `frame` cell -> (H, W, 3) uint8 RGB. A path is read only under `roots` (None =
    anywhere), only a regular file within the size bound; a refused path raises FrameRefused."""
    from seqtrack_mlflow.data.frames import decode_jpeg_bytes, read_frame_bytes
    from seqtrack_mlflow.errors import DataError

    if isinstance(value, np.ndarray):
        if value.ndim != 3 or value.shape[2] != 3 or value.shape[0] < 1 or value.shape[1] < 1:
            raise DataError(f"a frame array must be (H, W, 3) RGB with H, W >= 1, got shape {value.shape}")
        if value.dtype.kind not in "uif" or not np.isfinite(value).all() or value.min() < 0 or value.max() > 255:
            raise DataError("a frame array must hold pixel values in [0, 255]")
        return np.ascontiguousarray(value, dtype=np.uint8)
    if isinstance(value, (bytes, bytearray)):
        return decode_jpeg_bytes(bytes(value))
    if not isinstance(value, str):
        raise DataError(f"a frame must be a path, a data URI or an (H, W, 3) array, got {type(value).__name__}")
    text = value
    if text.startswith(_DATA_URI):
        head, sep, payload = text.partition(",")
        if not sep or ";base64" not in head:
            raise DataError("a frame data URI must read data:image/jpeg;base64,<data>")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise DataError("a frame data URI holds invalid base64") from None
        return decode_jpeg_bytes(data, "data URI")
    path = _allowed_path(text, roots)
    try:
        data = read_frame_bytes(path)
    except DataError:
        if roots is None:  # the user's own process and files: the reason helps
            raise
        raise FrameRefused(REFUSED_PATH) from None
    return decode_jpeg_bytes(data, path if roots is None else "frame file")


def _frames(cells, roots):
    for i, cell in enumerate(cells):
        try:
            yield decode_frame(cell, roots)
        except FrameRefused as exc:
            raise FrameRefused(f"frame {i}: {exc}") from None


def sample_example(frames: int = 3):
    """The input example of every logged model: the first frames of the bundled sample's
    airplane-1 (generated offline on first use) as data URIs, and its first box."""
    from seqtrack_mlflow.data.lasot import LasotDataset
    from seqtrack_mlflow.data.synthetic import ensure_sample_data

    root = ensure_sample_data()
    sequence = next(s for s in LasotDataset(root, ("airplane",)).sequences if s.name == "airplane-1")
    data = [jpeg_data_uri(Path(sequence.frame_path(i)).read_bytes()) for i in range(frames)]
    return tracking_input(data, sequence.boxes[0])


class SeqTrackPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from seqtrack_mlflow.model.seqtrack import SeqTrack
        from seqtrack_mlflow.track.tracker import TrackerConfig

        # Building the network draws its random init before the weights replace it: fork the
        # RNG so loading a model inside a training process changes nothing it computes next.
        with torch.random.fork_rng(devices=[]):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = SeqTrack.from_pretrained(context.artifacts[WEIGHTS_ARTIFACT], map_location=device)
        settings = self.model.tracker_settings
        known = {f.name for f in dataclasses.fields(TrackerConfig)}
        self.model_config = dict(context.model_config or {})
        track = {k: v for k, v in self.model_config.items() if k in known}
        self.tracker_config = TrackerConfig(**{**{k: v for k, v in settings.items() if k in known}, **track})
        frame_roots(self.model_config)  # a malformed frame_roots fails at load, not per request

    def predict(self, context, model_input, params=None):
        """Boxes for the frames; every refusal is an MlflowException of one line (no traceback,
        nothing about the server's files)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from seqtrack_mlflow.errors import SeqTrackError, first_line

        try:
            return self._predict(model_input)
        except FrameRefused as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except SeqTrackError as exc:
            raise MlflowException(first_line(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise MlflowException(f"malformed input: {type(exc).__name__}: {first_line(exc)[:200]}; "
                                  "give columns frame, x, y, w, h (tracking_input)",
                                  error_code=INVALID_PARAMETER_VALUE) from None
        except MemoryError:
            raise MlflowException("the input needs more memory than this server has",
                                  error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, model_input):
        import pandas as pd

        from seqtrack_mlflow.errors import DataError
        from seqtrack_mlflow.track.tracker import SeqTrackTracker, track_frames

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in ("frame", *BOX_COLUMNS) if c not in frame.columns]
        if missing:
            raise DataError(f"input lacks column(s) {missing}; give frame, x, y, w, h (tracking_input)")
        if len(frame) == 0:
            raise DataError("no frames given")
        box = np.array([float(frame[c].iloc[0]) for c in BOX_COLUMNS])
        roots = frame_roots(self.model_config)
        tracker = SeqTrackTracker(self.model, self.tracker_config, next(self.model.parameters()).device)
        boxes, _ = track_frames(tracker, _frames(frame["frame"], roots), box)
        return pd.DataFrame(boxes, columns=list(BOX_COLUMNS))


mlflow.models.set_model(SeqTrackPyfunc())
