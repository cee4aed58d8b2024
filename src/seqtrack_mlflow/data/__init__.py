"""Data: LaSOT reader (lasot.py), the bundled procedural sample data (synthetic.py), the
configured dataset and its origin (dataset.py), LaSOT download (download.py) and bounded zip
extraction (archive.py), frame decoding (frames.py), frame index as an Arrow table (index.py),
dataset summary (summary.py), the SeqTrack training sampler and transforms (sampler.py,
transforms.py) and a picture of samples (debug.py).

Nothing here imports mlflow or huggingface_hub; `datasets` is imported lazily by index.py.
"""
