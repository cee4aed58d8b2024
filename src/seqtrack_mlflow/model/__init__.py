"""SeqTrack network (Chen et al., CVPR 2023): encoder (vit.py), decoder (decoder.py), assembly,
box tokenizer and loss (seqtrack.py); building models and loading weights (load.py)."""

from seqtrack_mlflow.model.load import (
    adapt_pos_embeds,
    build_seqtrack,
    load_official,
    load_pretrained_encoder,
    model_from_checkpoint,
    official_key_shapes,
)
from seqtrack_mlflow.model.seqtrack import (
    SeqTrack,
    boxes_to_sequences,
    class_weights,
    end_token,
    seqtrack_loss,
    start_token,
    tokens_to_boxes,
)
from seqtrack_mlflow.model.vit import resize_encoder_pos_embed, resize_pos_embed

__all__ = [
    "SeqTrack", "adapt_pos_embeds", "boxes_to_sequences", "build_seqtrack", "class_weights",
    "end_token", "load_official", "load_pretrained_encoder", "model_from_checkpoint",
    "official_key_shapes", "resize_encoder_pos_embed", "resize_pos_embed", "seqtrack_loss",
    "start_token", "tokens_to_boxes",
]
