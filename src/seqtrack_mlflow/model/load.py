"""Building SeqTrack models and loading weights into them, all from a `ModelConfig`:

- `build_seqtrack(cfg)`: random init from torch's current seed, plus the optional pretrained
  encoder (`cfg.pretrained`, MAE/timm ViT weights; nothing is ever downloaded);
- `load_official(path, cfg)`: a released SeqTrack checkpoint (SEQTRACK_ep0500.pth.tar, weights
  under 'net') with strict=True, position embeddings resampled when crop sizes differ;
- `model_from_checkpoint(state)`: this project's checkpoint, rebuilt from its stored config.
(`SeqTrack.from_pretrained` reads the exported config.json + model.safetensors layout.)

Files are read by `torchfile.read_torch_file`, the project's one safe loader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from seqtrack_mlflow.config import Config, ModelConfig, load_config
from seqtrack_mlflow.errors import CheckpointError, ConfigError
from seqtrack_mlflow.model.seqtrack import SeqTrack, model_shapes
from seqtrack_mlflow.model.vit import resize_pos_embed
from seqtrack_mlflow.model.weights import check_shapes, load_strict
from seqtrack_mlflow.torchfile import read_torch_file, state_dict_of

OFFICIAL_KEYS = Path(__file__).with_name("official_keys.txt")


def build_seqtrack(cfg: ModelConfig) -> SeqTrack:
    """The network of `cfg`; random init from torch's current seed, then the optional
    pretrained encoder (cfg.pretrained)."""
    model = SeqTrack(cfg)
    if cfg.pretrained:
        load_pretrained_encoder(model, cfg.pretrained)
    return model


def adapt_pos_embeds(state: Mapping[str, torch.Tensor], model: SeqTrack) -> dict[str, torch.Tensor]:
    """Resample a SeqTrack state dict's position embeddings to `model`'s crop sizes.

    The checkpoint's search grid is read from its decoder `pos_embed` (one row per search
    token); the rest of `encoder.body.pos_embed` is the template grid. Both grids and the
    decoder table are resized bicubically (vit.resize_pos_embed). Identity when they match.
    """
    state = dict(state)
    enc_key, dec_key = "encoder.body.pos_embed", "pos_embed"
    if enc_key not in state or dec_key not in state:
        return state  # reported as missing keys by the strict load
    vit = model.encoder.body
    enc, dec = state[enc_key], state[dec_key]
    if enc.ndim != 3 or dec.ndim != 3 or enc.shape[-1] != vit.embed_dim:
        return state  # reported as a shape mismatch
    nx_old = dec.shape[1]
    nz_old = enc.shape[1] - nx_old
    if (nx_old, nz_old) == (vit.num_patches_search, vit.num_patches_template):
        return state
    for n, what in ((nx_old, "search"), (nz_old, "template")):
        if n <= 0 or math.isqrt(n) ** 2 != n:
            raise CheckpointError(f"checkpoint position embeddings: {n} {what} tokens is not a square grid")
    state[enc_key] = torch.cat([resize_pos_embed(enc[:, :nx_old], vit.side_x),
                                resize_pos_embed(enc[:, nx_old:], vit.side_z)], dim=1)
    state[dec_key] = resize_pos_embed(dec, vit.side_x)
    return state


def load_official(path_or_state_dict: str | Path | Mapping[str, Any],
                  cfg: ModelConfig | None = None) -> SeqTrack:
    """An official SeqTrack checkpoint (SEQTRACK_ep0500.pth.tar, weights under 'net') or a
    state dict -> SeqTrack of `cfg` (default: the seqtrack_b256 preset), loaded with
    strict=True. Position embeddings are resampled when the crop sizes differ. Raises
    CheckpointError on unreadable files, missing/unexpected keys or wrong shapes."""
    cfg = cfg if cfg is not None else load_config("seqtrack_b256").model
    cfg = dataclasses.replace(cfg, pretrained="")  # every weight comes from the checkpoint
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        source = f"checkpoint {str(path_or_state_dict)!r}"
        obj = read_torch_file(path_or_state_dict)
    state = state_dict_of(obj, source)
    model = SeqTrack(cfg)
    load_strict(model, adapt_pos_embeds(state, model), source)
    return model


_NOT_ENCODER = ("cls_token", "dist_token", "mask_token", "head.", "head_dist.", "pre_logits.",
                "fc_norm.", "decoder_")  # classifier / MAE-decoder entries of ViT checkpoints


def load_pretrained_encoder(model: SeqTrack, path: str | Path) -> None:
    """Load MAE or timm ViT weights (a local file) into model.encoder.body.

    As official vit.py load_pretrained: the cls token is dropped, and the square position
    grid (cls entry removed) is resampled bicubically to the search grid and to the template
    grid, which are concatenated into the encoder's [search | template] table.
    """
    source = f"pretrained encoder {str(path)!r}"
    state = state_dict_of(read_torch_file(path), source)
    state = {k.removeprefix("encoder.body."): v for k, v in state.items()
             if not k.startswith(_NOT_ENCODER)}
    vit = model.encoder.body
    pe = state.get("pos_embed")
    if pe is not None and pe.shape != vit.pos_embed.shape:
        if pe.ndim != 3 or pe.shape[0] != 1:
            raise CheckpointError(f"{source}: pos_embed has shape {tuple(pe.shape)}, want (1, N, C)")
        n = pe.shape[1]
        if math.isqrt(n - 1) ** 2 == n - 1:
            pe = pe[:, 1:]  # drop the cls token's entry
        elif math.isqrt(n) ** 2 != n:
            raise CheckpointError(f"{source}: {n} position embeddings are not a square grid")
        state["pos_embed"] = torch.cat([resize_pos_embed(pe, vit.side_x),
                                        resize_pos_embed(pe, vit.side_z)], dim=1)
    load_strict(vit, state, source)


def checkpoint_config(state: dict[str, Any], source: str) -> Config:
    """The validated config stored in a project checkpoint."""
    tree = state.get("config")
    if not isinstance(tree, dict):
        raise CheckpointError(f"{source} has no config; cannot rebuild its model")
    try:
        return Config.from_dict(tree, origin=f"{source} config")
    except ConfigError as exc:
        raise CheckpointError(f"{source}: its stored config is not valid: {exc}") from None


def model_from_checkpoint(state: dict[str, Any], source: str) -> tuple[SeqTrack, Config]:
    """Rebuild the SeqTrack of a project checkpoint from its stored config and load its
    weights (strict); (model in eval mode on the CPU, the checkpoint's config)."""
    cfg = checkpoint_config(state, source)
    weights = state_dict_of(state.get("model_state_dict"), source)
    # Names and shapes against the stored config before the network is allocated.
    check_shapes(model_shapes(cfg.model), {k: tuple(v.shape) for k, v in weights.items()}, source)
    model = SeqTrack(dataclasses.replace(cfg.model, pretrained=""))  # weights from the checkpoint
    load_strict(model, weights, source)
    return model.eval(), cfg


def official_key_shapes(path: Path = OFFICIAL_KEYS) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the official B256 state dict, from official_keys.txt."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split()
            out[name] = tuple(int(s) for s in shape.split("x"))
    return out
