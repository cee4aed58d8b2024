"""Dataset summary: what a run trains and validates on, per class and in total.

`dataset_summary(dataset, cfg)` returns a JSON-ready dict with a stable key order; the trainer
writes it to `dataset_summary.json` and logs it. `python -m seqtrack_mlflow summary` prints it
as a table (and writes --out) without training.

Training samples per epoch: the sampler draws sequences uniformly among the eligible training
sequences (official TrackingSampler), so each class gets samples_per_epoch * (its eligible
training sequences / all eligible training sequences) in expectation; the summary reports that
share rounded by largest remainder so the classes add up to samples_per_epoch exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from seqtrack_mlflow.config import Config
from seqtrack_mlflow.data.lasot import LasotDataset
from seqtrack_mlflow.data.sampler import class_shares, is_eligible

log = logging.getLogger(__name__)

SHARE_RULE = ("uniform over eligible training sequences (official TrackingSampler): a class gets "
              "samples_per_epoch x its share of eligible training sequences (expected value, "
              "largest-remainder rounding)")
COUNT_KEYS = ("train_sequences", "test_sequences", "eligible_train_sequences", "frames",
              "visible_frames", "train_frames", "train_visible_frames", "test_frames",
              "test_visible_frames", "samples_per_epoch", "skipped_sequences")


def dataset_summary(dataset: LasotDataset, cfg: Config) -> dict[str, Any]:
    """Per-class and total counts (see COUNT_KEYS), the split rule per class, skipped
    sequences with reasons, and the sample-sharing rule."""
    shares = class_shares(dataset, cfg)
    per_class: dict[str, dict[str, Any]] = {}
    for cls in dataset.classes:
        seqs = [s for s in dataset.sequences if s.class_name == cls]
        train = [s for s in seqs if s.split == "train"]
        test = [s for s in seqs if s.split == "test"]
        row: dict[str, Any] = {
            "train_sequences": len(train),
            "test_sequences": len(test),
            "eligible_train_sequences": sum(is_eligible(s, cfg.model.num_templates) for s in train),
            "frames": sum(len(s) for s in seqs),
            "visible_frames": int(sum(int(s.visible.sum()) for s in seqs)),
            "train_frames": sum(len(s) for s in train),
            "train_visible_frames": int(sum(int(s.visible.sum()) for s in train)),
            "test_frames": sum(len(s) for s in test),
            "test_visible_frames": int(sum(int(s.visible.sum()) for s in test)),
            "samples_per_epoch": shares.get(cls, 0),
            "skipped_sequences": sum(1 for name, _ in dataset.skipped if name.rsplit("-", 1)[0] == cls),
            "split_rule": dataset.split_rules.get(cls, ""),
            "test_names": [s.name for s in test],
        }
        per_class[cls] = row
    total = {k: sum(row[k] for row in per_class.values()) for k in COUNT_KEYS}
    return {
        "source": cfg.data.source,
        "root": str(dataset.root),
        "classes": per_class,
        "total": total,
        "skipped": [{"sequence": name, "reason": reason} for name, reason in dataset.skipped],
        "samples_per_epoch_rule": SHARE_RULE,
        "val_samples": cfg.data.val_samples,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A fixed-width table: one line per class and a total line, then skipped sequences."""
    cols = [("class", None), ("train", "train_sequences"), ("test", "test_sequences"),
            ("frames", "frames"), ("visible", "visible_frames"), ("samples/ep", "samples_per_epoch"),
            ("skipped", "skipped_sequences")]
    rows = [[name] + [str(row[k]) for _, k in cols[1:]] for name, row in summary["classes"].items()]
    rows.append(["total"] + [str(summary["total"][k]) for _, k in cols[1:]])
    header = [c for c, _ in cols]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(cols))]

    def fmt(r):
        return "  ".join(r[0].ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r))
    lines = [f"dataset: {summary['source']} at {summary['root']}", fmt(header),
             fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows[:-1]] + [fmt(["-" * w for w in widths]), fmt(rows[-1])]
    for name, row in summary["classes"].items():
        lines.append(f"{name}: test = {', '.join(row['test_names']) or '-'} ({row['split_rule']})")
    lines.append(f"samples per epoch: {summary['samples_per_epoch_rule']}")
    for item in summary["skipped"]:
        lines.append(f"skipped {item['sequence']}: {item['reason']}")
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
