"""SeqTrack network (Chen et al., CVPR 2023): encoder (vit.py), decoder (decoder.py), assembly,
box tokenizer, loss and checkpoint loading (seqtrack.py)."""

from seqtrack_mlflow.model.seqtrack import (
    SeqTrack,
    adapt_pos_embeds,
    boxes_to_sequences,
    build_seqtrack,
    class_weights,
    end_token,
    load_official,
    load_pretrained_encoder,
    official_key_shapes,
    read_checkpoint,
    seqtrack_loss,
    start_token,
    tokens_to_boxes,
)
from seqtrack_mlflow.model.vit import resize_encoder_pos_embed, resize_pos_embed

__all__ = [
    "SeqTrack", "adapt_pos_embeds", "boxes_to_sequences", "build_seqtrack", "class_weights",
    "end_token", "load_official", "load_pretrained_encoder", "official_key_shapes",
    "read_checkpoint", "resize_encoder_pos_embed", "resize_pos_embed", "seqtrack_loss",
    "start_token", "tokens_to_boxes",
]
