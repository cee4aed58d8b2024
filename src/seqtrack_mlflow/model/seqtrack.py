"""SeqTrack: visual tracking as sequence generation (Chen et al., CVPR 2023).

The network (paper Fig. 2; official microsoft/VideoX SeqTrack/lib/models/seqtrack/seqtrack.py):

    templates (T x (B,3,Tz,Tz)), search (B,3,S,S)
      -> ViT encoder over [search, templates] tokens          (vit.py)
      -> search tokens -> bottleneck Linear(C -> D)           memory (B, Nx, D)
      -> causal decoder over [START, cx, cy, w, h] tokens    (decoder.py), memory position
         embedding `pos_embed` (learned, sinusoid-initialised)
      -> vocab_embed MLP(D, D, bins + 2, 3 layers)            logits over bins + END + START

Training is teacher-forced: input [START, cx, cy, w, h], target [cx, cy, w, h, END], weighted
cross entropy (official lib/train/actors/seqtrack.py and lib/train/train_script.py). Inference
decodes 4 tokens greedily from START (official decoder.py `inference`,
lib/test/tracker/seqtrack.py), here with an exact key/value cache.

This file also holds the box tokenizer, the loss, the model's bookkeeping (parameter count,
FLOPs, optimizer groups), pretrained-encoder loading and the loader of official checkpoints.
State-dict names equal the official ones (see official_keys.txt next to this file).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqtrack_mlflow.config import CONFIG_DIR, ModelConfig, load_config
from seqtrack_mlflow.errors import CheckpointError
from seqtrack_mlflow.model.decoder import SeqTrackDecoder
from seqtrack_mlflow.model.vit import VisionTransformer, resize_pos_embed

NUM_COORDS = 4  # a box is (cx, cy, w, h), the official default DATA.SEQ_FORMAT 'xywh'
OFFICIAL_KEYS = Path(__file__).with_name("official_keys.txt")


def end_token(bins: int) -> int:
    return bins  # official: END = BINS


def start_token(bins: int) -> int:
    return bins + 1  # official: START = BINS + 1


# ---------------------------------------------------------------------------------------------
# Box tokenizer (official lib/train/actors/seqtrack.py, forward_pass)


def boxes_to_sequences(box_cxcywh: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, 4) as (cx, cy, w, h) normalised to the search crop -> decoder sequences.

    As the official actor: the box is clipped to the crop in corner form (a target partly
    outside the crop becomes its visible part), then each coordinate is quantised as
    floor(x * (bins - 1)), so 0 -> bin 0 and 1 -> bin bins-1.
    Returns seq_input (B, 5) = [START, cx, cy, w, h] and seq_target (B, 5) = [cx, cy, w, h, END].
    """
    assert box_cxcywh.ndim == 2 and box_cxcywh.shape[1] == 4, \
        f"want boxes (B, 4), got {tuple(box_cxcywh.shape)}"
    # Checked on the device: a Python assert on a tensor would sync the host every step on CUDA.
    torch._assert_async(torch.isfinite(box_cxcywh).all(), "boxes must be finite")
    box = box_cxcywh.float()
    cx, cy, w, h = box.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0.0, 1.0)  # (B, 4)
    x0, y0, x1, y1 = xyxy.unbind(-1)
    box = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)  # (B, 4) in [0, 1]
    tokens = torch.floor(box * (bins - 1)).long().clamp(0, bins - 1)  # (B, 4)
    B = tokens.shape[0]
    start = torch.full((B, 1), start_token(bins), dtype=torch.long, device=tokens.device)
    end = torch.full((B, 1), end_token(bins), dtype=torch.long, device=tokens.device)
    return torch.cat([start, tokens], 1), torch.cat([tokens, end], 1)  # (B, 5), (B, 5)


def tokens_to_boxes(tokens: torch.Tensor, bins: int) -> torch.Tensor:
    """Coordinate tokens (B, 4) -> (cx, cy, w, h) in [0, 1] (official tracker: / (bins - 1))."""
    assert tokens.shape[-1] == NUM_COORDS, f"want (B, 4) tokens, got {tuple(tokens.shape)}"
    return tokens.float() / (bins - 1)  # (B, 4)


# ---------------------------------------------------------------------------------------------
# Loss (official lib/train/train_script.py: CrossEntropyLoss(weight), END/START weight 0.01)


def class_weights(bins: int, device: torch.device | None = None) -> torch.Tensor:
    w = torch.ones(bins + 2, device=device)
    w[end_token(bins)] = 0.01  # the END target is easy and frequent: down-weight it
    w[start_token(bins)] = 0.01  # never a target, kept for parity with the official vector
    return w


def seqtrack_loss(logits: torch.Tensor, seq_target: torch.Tensor, bins: int) -> torch.Tensor:
    """Weighted cross entropy over all 5 target tokens, as torch's CrossEntropyLoss(weight=w).

    With reduction 'mean' and class weights, torch divides by the summed weights of the
    targets: loss = sum_i w[y_i] * nll_i / sum_i w[y_i]. Official CE_WEIGHT is 1.0.
    """
    V = bins + 2
    assert logits.shape[-1] == V, f"logits have {logits.shape[-1]} classes, want bins + 2 = {V}"
    assert logits.shape[:-1] == seq_target.shape, \
        f"logits {tuple(logits.shape)} and targets {tuple(seq_target.shape)} disagree"
    return F.cross_entropy(logits.reshape(-1, V).float(), seq_target.reshape(-1),
                           weight=class_weights(bins, logits.device))


# ---------------------------------------------------------------------------------------------
# The network


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """(n, dim) table of Vaswani et al. 2017: sin on even, cos on odd channels.

    Same values as the official lib/utils/pos_embed.py get_sinusoid_encoding_table, which
    initialises the decoder memory's (learned) position embedding.
    """
    pos = torch.arange(n, dtype=torch.float64)[:, None]  # (n, 1)
    j = torch.arange(dim, dtype=torch.float64)[None, :]  # (1, dim)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (n, dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class Encoder(nn.Module):
    """Holds the ViT as `body`, so parameter names read encoder.body.* as officially."""

    def __init__(self, body: VisionTransformer):
        super().__init__()
        self.body = body

    def forward(self, templates: list[torch.Tensor], search: torch.Tensor) -> torch.Tensor:
        return self.body(templates, search)


class MLP(nn.Module):
    """num_layers Linear layers with ReLU between them (official seqtrack.py MLP, from DETR)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SeqTrack(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bins = cfg.bins
        vit = VisionTransformer(
            search_size=cfg.search_size, template_size=cfg.template_size,
            patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, drop_path=cfg.drop_path,
            num_templates=cfg.num_templates)
        self.num_patches_search = vit.num_patches_search
        # Registration order = official order, so state_dict() lists keys as the official one.
        self.encoder = Encoder(vit)
        self.bottleneck = nn.Linear(cfg.embed_dim, cfg.decoder_dim)  # aligns encoder and decoder widths
        self.decoder = SeqTrackDecoder(cfg.bins, cfg.decoder_dim, cfg.decoder_layers,
                                       cfg.decoder_heads, cfg.decoder_ffn, cfg.dropout,
                                       max_len=NUM_COORDS + 1)
        self.vocab_embed = MLP(cfg.decoder_dim, cfg.decoder_dim, cfg.bins + 2, 3)
        # Position embedding of the decoder memory (official FEATURE_TYPE 'x': search tokens only).
        self.pos_embed = nn.Parameter(sinusoid_table(self.num_patches_search, cfg.decoder_dim)[None])

    # -- forward passes ---------------------------------------------------------------------

    def encode(self, templates: list[torch.Tensor], search: torch.Tensor) -> torch.Tensor:
        """Images -> decoder memory (B, Nx, D): the search tokens of the encoder, projected."""
        x = self.encoder(templates, search)  # (B, Nx, C)
        # Official applies the bottleneck only when C != D; we always do (C != D in every
        # official preset, and a parameter that is sometimes skipped would be a trap).
        return self.bottleneck(x)  # (B, Nx, D)

    def decode(self, memory: torch.Tensor, seq_input: torch.Tensor) -> torch.Tensor:
        """Teacher-forced, causal: memory (B, Nx, D), tokens (B, L) -> logits (B, L, bins + 2)."""
        h = self.decoder(memory, self.pos_embed, seq_input)  # (B, L, D)
        return self.vocab_embed(h)  # (B, L, bins + 2)

    def forward(self, templates: list[torch.Tensor], search: torch.Tensor,
                seq_input: torch.Tensor) -> torch.Tensor:
        """templates: list of (B, 3, Tz, Tz); search (B, 3, S, S); seq_input (B, 5) long.

        Returns logits (B, 5, bins + 2); position i predicts target token i (causal mask).
        """
        assert seq_input.dtype == torch.long, f"seq_input must be int64 tokens, got {seq_input.dtype}"
        return self.decode(self.encode(templates, search), seq_input)

    @torch.no_grad()
    def predict(self, templates: list[torch.Tensor], search: torch.Tensor,
                window: bool | torch.Tensor = False, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy 4-step decode from START -> tokens (B, 4) long, confidence (B, 4) float.

        As the official decoder `inference`: each step takes the softmax over the whole
        vocabulary, keeps the `bins` coordinate classes (END/START can never be chosen),
        optionally multiplies cx and cy by a Hanning window over the bins (official
        TEST.WINDOW: favours small motion, the crop is centred on the last position), and
        takes the arg max. window=True builds a float32 window; a (1, bins) tensor is used as
        given (the tracker passes the official float64 np.hanning one). confidence is that
        chosen value: the token's softmax probability, times its window weight for cx, cy when
        a window is on (the official tracker's template update threshold is calibrated on it).
        The model runs in eval mode (no dropout) for the call and is restored afterwards.
        use_cache=True reuses keys/values of earlier steps and the memory's projections;
        use_cache=False recomputes the whole prefix every step, as the official code does.
        """
        # Eval mode for the call, each module's own mode restored after: flipping the flags
        # directly (eval() + train() cost ~0.5 ms a call, 17% of a cached default decode).
        training = [m for m in self.modules() if m.training]
        for m in training:
            m.training = False
        try:
            memory = self.encode(templates, search)  # (B, Nx, D)
            B = memory.shape[0]
            seq = torch.full((B, 1), start_token(self.bins), dtype=torch.long, device=memory.device)
            if isinstance(window, torch.Tensor):  # the tracker's own window (official: float64 np.hanning)
                hann = window.to(memory.device)
            else:
                hann = (torch.hann_window(self.bins, periodic=False, dtype=torch.float32,
                                          device=memory.device) if window else None)  # = np.hanning
            mem_kv = self.decoder.memory_kv(memory, self.pos_embed) if use_cache else None
            cache = None
            confidence = []
            for i in range(NUM_COORDS):
                if use_cache:
                    h, cache = self.decoder.step(seq[:, -1:], mem_kv, cache)  # (B, 1, D)
                else:
                    h = self.decoder(memory, self.pos_embed, seq)  # (B, i + 1, D)
                probs = self.vocab_embed(h[:, -1]).float().softmax(-1)[:, :self.bins]  # (B, bins)
                if hann is not None and i < 2:  # cx, cy
                    probs = probs * hann
                conf, token = probs.max(-1)  # (B,), (B,)
                seq = torch.cat([seq, token[:, None]], 1)  # (B, i + 2)
                confidence.append(conf)
            return seq[:, 1:], torch.stack(confidence, 1)  # (B, 4), (B, 4)
        finally:
            for m in training:
                m.training = True

    # -- bookkeeping --------------------------------------------------------------------------

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops_per_sample(self) -> int:
        """Analytic FLOPs of one training sample (forward + backward), matmuls only.

        Forward: 2 FLOPs per multiply-add of every weight matrix per token it touches, plus
        attention's q k^T and a v products (2 * 2 * Lq * Lk * width each layer). Backward costs
        twice the forward, hence 3x in total: the 6 * N * tokens + attention rule of Kaplan et
        al. 2020 / PaLM (Chowdhery et al. 2022, App. B), as nanoGPT's estimate_flops.
        Norms, softmax, GELU and embedding look-ups are left out (< 1% here).
        """
        c = self.cfg
        C, D, V, F_ = c.embed_dim, c.decoder_dim, c.bins + 2, c.decoder_ffn
        H = int(C * c.mlp_ratio)
        nx = (c.search_size // c.patch_size) ** 2
        nz = (c.template_size // c.patch_size) ** 2
        n = nx + c.num_templates * nz  # encoder tokens
        L = NUM_COORDS + 1  # decoder tokens
        fwd = 2 * n * 3 * c.patch_size ** 2 * C  # patch embedding
        fwd += (c.depth - 1) * (2 * n * (3 * C * C + C * C + 2 * C * H) + 2 * 2 * n * n * C)  # ViT blocks
        # last block: the fused qkv for all n tokens, everything else for the nx search rows only
        fwd += 2 * n * 3 * C * C + 2 * nx * (C * C + 2 * C * H) + 2 * 2 * nx * n * C
        fwd += 2 * nx * C * D  # bottleneck
        per_layer = (2 * L * 4 * D * D + 2 * 2 * L * L * D  # self-attention
                     + 2 * L * 2 * D * D + 2 * nx * 2 * D * D + 2 * 2 * L * nx * D  # cross-attention
                     + 2 * L * 2 * D * F_)  # FFN
        fwd += c.decoder_layers * per_layer
        fwd += 2 * L * (2 * D * D + D * V)  # vocab MLP
        return 3 * fwd

    def param_groups(self, lr: float, encoder_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as the official get_optimizer_scheduler (lib/train/base_functions.py).

        Two groups: everything outside the encoder at `lr`, the encoder at lr * encoder_lr_mult.
        The official code applies the same weight decay to every parameter (norms, biases and
        position embeddings included); we match it. Frozen parameters are left out.
        """
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        rest = [p for n, p in named if not n.startswith("encoder.")]
        enc = [p for n, p in named if n.startswith("encoder.")]
        return [
            {"name": "decoder", "params": rest, "lr": lr, "weight_decay": weight_decay},
            {"name": "encoder", "params": enc, "lr": lr * encoder_lr_mult, "weight_decay": weight_decay},
        ]


def build_seqtrack(cfg: ModelConfig) -> SeqTrack:
    """The network of `cfg`; random init from torch's current seed, then the optional
    pretrained encoder (cfg.pretrained). Nothing is ever downloaded."""
    model = SeqTrack(cfg)
    if cfg.pretrained:
        load_pretrained_encoder(model, cfg.pretrained)
    return model


# ---------------------------------------------------------------------------------------------
# Checkpoint reading

class _OfficialRecord:
    """Inert stand-in for the official trainer's bookkeeping objects in a .pth.tar
    (Settings, AverageMeter, ...): keeps their plain-data state and runs none of their code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _OfficialRecord:
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Globals an official SEQTRACK_ep*.pth.tar may hold besides tensors (lib/train/trainers/
# base_trainer.py save_checkpoint stores 'stats' and 'settings' objects). Only these exact
# names are let through, each as an inert stand-in; anything else is refused.
_OFFICIAL_GLOBALS: dict[str, Any] = {
    "lib.train.admin.settings.Settings": _OfficialRecord,
    "lib.train.admin.stats.AverageMeter": _OfficialRecord,
    "lib.train.admin.stats.StatValue": _OfficialRecord,
    "lib.train.admin.local.EnvironmentSettings": _OfficialRecord,
    "argparse.Namespace": _OfficialRecord,
    "easydict.EasyDict": collections.OrderedDict,  # a dict subclass: keep keys and attributes
}


def read_checkpoint(path: str | Path) -> Any:
    """torch.load(weights_only=True) with errors turned into CheckpointError.

    If the safe loader refuses the file only because of the official trainer's bookkeeping
    objects, they are read as inert records (never executed); any other global is refused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a PyTorch "
                              f"checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError, EOFError, KeyError, pickle.UnpicklingError):
        # Not a zip-format torch.save file, or its pickle is cut short.
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint "
                              f"({str(refusal).splitlines()[0][:200]})") from None
    unknown = sorted(set(names) - set(_OFFICIAL_GLOBALS))
    if not names or unknown:
        detail = f"unknown object types {unknown}" if unknown else str(refusal).splitlines()[0]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely: {detail}; "
                              f"only tensors and plain data are accepted") from None
    try:
        with torch.serialization.safe_globals([(_OFFICIAL_GLOBALS[n], n) for n in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely: "
                              f"{str(exc).splitlines()[0]}") from None


def _state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint object (official: under 'net')."""
    if isinstance(obj, Mapping):
        for key in ("net", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (want a mapping, or one under 'net')")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source} is not a state dict: entries {bad[:3]} are not tensors")
    # Checkpoints saved from a DistributedDataParallel wrapper prefix every name with 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with each kind of mismatch reported as CheckpointError."""
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
    wrong = [f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{source} has {len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[:3]}")
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
                  preset: str | ModelConfig = "seqtrack_b256") -> SeqTrack:
    """An official SeqTrack checkpoint (SEQTRACK_ep0500.pth.tar, weights under 'net') or a
    state dict -> SeqTrack of the preset (a configs/<preset>.yaml name, or a ModelConfig),
    loaded with strict=True. Position embeddings are resampled when the crop sizes differ.
    Raises CheckpointError on unreadable files, missing/unexpected keys or wrong shapes.
    """
    if isinstance(preset, ModelConfig):
        cfg = preset
    else:
        cfg = load_config(CONFIG_DIR / f"{preset}.yaml").model
    cfg = dataclasses.replace(cfg, pretrained="")  # every weight comes from the checkpoint
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        source = f"checkpoint {str(path_or_state_dict)!r}"
        obj = read_checkpoint(path_or_state_dict)
    state = _state_dict_of(obj, source)
    model = SeqTrack(cfg)
    _load_strict(model, adapt_pos_embeds(state, model), source)
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
    state = _state_dict_of(read_checkpoint(path), source)
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
    _load_strict(vit, state, source)


def official_key_shapes(path: Path = OFFICIAL_KEYS) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the official B256 state dict, from official_keys.txt."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split()
            out[name] = tuple(int(s) for s in shape.split("x"))
    return out
