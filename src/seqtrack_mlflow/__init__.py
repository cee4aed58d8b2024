"""seqtrack-mlflow: deterministic SeqTrack (Chen et al., CVPR 2023) training tracked with MLflow."""

__version__ = "0.1.0"
