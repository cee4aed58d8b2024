"""The actor: batch in, (loss, stats) out. The trainer never touches the model's internals.

As the official `lib/train/actors/seqtrack.py`: the search box becomes the token sequences
[START, cx, cy, w, h] (input) and [cx, cy, w, h, END] (target); the model is teacher-forced
with a causal mask and trained with the weighted cross entropy of `seqtrack_loss`.
"""

from __future__ import annotations

import torch

from seqtrack_mlflow.model import boxes_to_sequences, seqtrack_loss


class SeqTrackActor:
    def __init__(self, model: torch.nn.Module, bins: int, label_rounding: str = "floor"):
        self.model = model
        self.bins = bins
        self.label_rounding = label_rounding

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: templates (B, T, 3, Ht, Wt), search (B, 3, Hs, Ws), box (B, 4) cxcywh in [0, 1]."""
        seq_input, seq_target = boxes_to_sequences(batch["box"], self.bins, self.label_rounding)  # (B, 5), (B, 5)
        templates = list(batch["templates"].unbind(1))                       # T x (B, 3, Ht, Wt)
        logits = self.model(templates, batch["search"], seq_input)           # (B, 5, bins + 2)
        loss = seqtrack_loss(logits, seq_target, self.bins)
        # Teacher-forced argmax over the coordinate bins only: the boxes the model "sees".
        pred_tokens = logits[:, :4, : self.bins].argmax(dim=-1)              # (B, 4)
        return loss, {"pred_tokens": pred_tokens}
