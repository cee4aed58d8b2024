"""Inference and evaluation: tracker.py (the SeqTrack tracker and LaSOT-format result files),
metrics.py (IoU-based success/AUC, precision, normalised precision), scoring.py (tracked
sequences -> scores), plots.py (success and precision plots, tracking GIF), evaluate.py (the `evaluate` command: checkpoint -> MLflow)."""
