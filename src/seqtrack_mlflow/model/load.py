"""Building SeqTrack models and loading weights into them, all from a `ModelConfig`:

- `build_seqtrack(cfg)`: random init from torch's current seed, plus the optional pretrained
  encoder (`cfg.pretrained`, MAE/timm ViT weights; nothing is ever downloaded);
- `load_official(path, cfg)`: a released SeqTrack checkpoint (SEQTRACK_ep0500.pth.tar, weights
  under 'net') with strict=True, position embeddings resampled when crop sizes differ;
- `model_from_checkpoint(state)`: this project's checkpoint, rebuilt from its stored config.

Files are read by `train.checkpoint.read_torch_file`, the project's one safe loader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from seqtrack_mlflow.config import Config, ModelConfig, load_config
from seqtrack_mlflow.errors import CheckpointError, ConfigError
from seqtrack_mlflow.model.seqtrack import SeqTrack
from seqtrack_mlflow.model.vit import resize_pos_embed
from seqtrack_mlflow.train.checkpoint import read_torch_file, state_dict_of

OFFICIAL_KEYS = Path(__file__).with_name("official_keys.txt")


def build_seqtrack(cfg: ModelConfig) -> SeqTrack:
    """The network of `cfg`; random init from torch's current seed, then the optional
    pretrained encoder (cfg.pretrained)."""
    model = SeqTrack(cfg)
    if cfg.pretrained:
        load_pretrained_encoder(model, cfg.pretrained)
    return model


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with each kind of mismatch reported as CheckpointError
    (the first differing key and both shapes for a shape mismatch)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}")
    wrong = [k for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source} does not fit the model: {len(wrong)} tensor(s) of another shape, "
                              f"first {k}: {tuple(state[k].shape)} in the weights vs {tuple(own[k].shape)} "
                              "in the model")
    module.load_state_dict(state, strict=True)


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
    model = SeqTrack(dataclasses.replace(cfg.model, pretrained=""))  # weights from the checkpoint
    load_strict(model, state_dict_of(state["model_state_dict"], source), source)
    return model.eval(), cfg


def from_pretrained(repo_id_or_path: str | Path, revision: str | None = None, subfolder: str = "",
                    token: str | None = None, endpoint: str | None = None,
                    map_location: str | torch.device = "cpu") -> SeqTrack:
    """A ready model (eval mode) from a Hub repo or a local folder in one call.

    Reads `config.json` (ModelConfig fields at the top level, as PyTorchModelHubMixin writes
    init kwargs) and `model.safetensors` (no pickle: nothing in the file can run code).
    `revision` (branch, tag such as run-1a2b3c4d, or commit) pins a mirrored run;
    `subfolder="checkpoints/epoch_3"` picks one epoch instead of the best. The crop geometry the
    weights were trained with is in `model.tracker_settings` (TrackerConfig fields). Hub
    downloads go through seqtrack_mlflow.hub (HF cache).
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from seqtrack_mlflow.model.seqtrack import HUB_CONFIG_NAME, HUB_WEIGHTS_NAME

    names = [f"{subfolder.strip('/')}/{n}" if subfolder.strip("/") else n
             for n in (HUB_CONFIG_NAME, HUB_WEIGHTS_NAME)]
    local = Path(repo_id_or_path)
    if local.is_dir():
        config_path, weights_path = (local / n for n in names)
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"{path} does not exist; a pretrained folder holds "
                                      f"{HUB_CONFIG_NAME} and {HUB_WEIGHTS_NAME}")
    else:
        from seqtrack_mlflow import hub

        config_path, weights_path = (hub.cached_file(str(repo_id_or_path), n, revision=revision,
                                                     token=token, endpoint=endpoint) for n in names)
    source = f"{repo_id_or_path}: {names[1]}"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(ModelConfig)} - {"pretrained"}
        model_cfg = Config.from_dict({"model": {k: v for k, v in config.items() if k in known}},
                                     origin=f"{repo_id_or_path}: {names[0]}").model
        state = load_file(str(weights_path), device="cpu")
    except (ValueError, OSError, SafetensorError) as exc:
        raise CheckpointError(f"{source} cannot be read with {names[0]}: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = SeqTrack(model_cfg)
    load_strict(model, state, source)
    model.tracker_settings = {"template_size": model_cfg.template_size, "search_size": model_cfg.search_size,
                              "num_templates": model_cfg.num_templates, **dict(config.get("tracker") or {})}
    return model.to(map_location).eval()


def official_key_shapes(path: Path = OFFICIAL_KEYS) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the official B256 state dict, from official_keys.txt."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split()
            out[name] = tuple(int(s) for s in shape.split("x"))
    return out
