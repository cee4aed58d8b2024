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
The seqtrack_mlflow package must be installed where the model is loaded (it holds the network).
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np

BOX_COLUMNS = ("x", "y", "w", "h")
WEIGHTS_ARTIFACT = "model"  # artifact key: the folder with config.json + model.safetensors
_DATA_URI = "data:image/"


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


def decode_frame(value: Any) -> np.ndarray:
    """One `frame` cell -> (H, W, 3) uint8 RGB."""
    from seqtrack_mlflow.data.frames import decode_jpeg_bytes, read_frame
    from seqtrack_mlflow.errors import DataError

    if isinstance(value, np.ndarray):
        if value.ndim != 3 or value.shape[2] != 3:
            raise DataError(f"a frame array must be (H, W, 3) RGB, got shape {value.shape}")
        return np.ascontiguousarray(value, dtype=np.uint8)
    if isinstance(value, (bytes, bytearray)):
        return decode_jpeg_bytes(bytes(value))
    text = str(value)
    if text.startswith(_DATA_URI):
        return decode_jpeg_bytes(base64.b64decode(text.split(",", 1)[1]), "data URI")
    return read_frame(Path(text))


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
        track = {k: v for k, v in dict(context.model_config or {}).items() if k in known}
        self.tracker_config = TrackerConfig(**{k: v for k, v in settings.items() if k in known}, **track)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from seqtrack_mlflow.errors import DataError
        from seqtrack_mlflow.track.tracker import SeqTrackTracker, track_frames

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame) == 0:
            raise DataError("no frames given")
        box = np.array([float(frame[c].iloc[0]) for c in BOX_COLUMNS])
        tracker = SeqTrackTracker(self.model, self.tracker_config, next(self.model.parameters()).device)
        boxes, _ = track_frames(tracker, (decode_frame(v) for v in frame["frame"]), box)
        return pd.DataFrame(boxes, columns=list(BOX_COLUMNS))


mlflow.models.set_model(SeqTrackPyfunc())
