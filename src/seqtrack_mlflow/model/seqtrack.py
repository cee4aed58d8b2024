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

This file also holds the box tokenizer, the loss and the model's bookkeeping (parameter count,
FLOPs, optimizer groups); load.py builds models and loads weights into them. State-dict names
equal the official ones (see official_keys.txt next to this file).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from seqtrack_mlflow.config import ModelConfig
from seqtrack_mlflow.model.decoder import SeqTrackDecoder
from seqtrack_mlflow.model.pretrained import config_fields, model_config, read_pretrained
from seqtrack_mlflow.model.vit import VisionTransformer
from seqtrack_mlflow.model.weights import load_strict, meta_shapes
from seqtrack_mlflow.names import HUB_TAGS, WEIGHTS_FILE

NUM_COORDS = 4  # a box is (cx, cy, w, h), the official default DATA.SEQ_FORMAT 'xywh'


def end_token(bins: int) -> int:
    return bins  # official: END = BINS


def start_token(bins: int) -> int:
    return bins + 1  # official: START = BINS + 1


# ---------------------------------------------------------------------------------------------
# Box tokenizer (official lib/train/actors/seqtrack.py, forward_pass)


def boxes_to_sequences(box_cxcywh: torch.Tensor, bins: int,
                       rounding: str = "floor") -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B, 4) as (cx, cy, w, h) normalised to the search crop -> decoder sequences.

    As the official actor: the box is clipped to the crop in corner form (a target partly
    outside the crop becomes its visible part), then each coordinate is quantised as
    floor(x * (bins - 1)) (rounding="floor", official), so 0 -> bin 0 and 1 -> bin bins-1.
    The tracker decodes a token as token / (bins - 1), so floor labels teach every coordinate
    half a bin too low; rounding="nearest" (floor(x * (bins - 1) + 0.5)) removes that bias,
    which matters with few bins (train.label_rounding, docs/fidelity.md).
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
    offset = {"floor": 0.0, "nearest": 0.5}[rounding]
    tokens = torch.floor(box * (bins - 1) + offset).long().clamp(0, bins - 1)  # (B, 4)
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


class SeqTrack(nn.Module, PyTorchModelHubMixin, license="mit", tags=list(HUB_TAGS),
               coders={ModelConfig: (config_fields, model_config)}):
    """The network of `config` (a ModelConfig, or its fields as a dict: a config.json).

    A `PyTorchModelHubMixin` (huggingface_hub): `save_pretrained(folder)` writes config.json
    (the ModelConfig fields at the top level, plus any `config=` keys given) and
    model.safetensors, `push_to_hub(repo_id)` uploads them, `from_pretrained` reads them back
    (strictly: every key, every shape)."""

    def __init__(self, config: ModelConfig | dict[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, ModelConfig) else model_config(config)
        # What save_pretrained writes to config.json: the flat fields, training-only keys left out.
        self._hub_mixin_config = config_fields(cfg)
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

    # -- Hugging Face Hub (PyTorchModelHubMixin: config.json + model.safetensors) --------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        subfolder: str = "", token: str | None = None, endpoint: str | None = None,
                        map_location: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                        force_download: bool = False, local_files_only: bool = False,
                        **ignored: Any) -> "SeqTrack":
        """A ready model (eval mode) from a Hub repo or a local folder in one call.

        The mixin's arguments (revision, token, cache_dir, force_download, local_files_only,
        map_location) mean what they mean there; loading is always strict (every key, every
        shape), and `model.safetensors` holds no pickle. Added: `subfolder="checkpoints/epoch_3"`
        picks one epoch of a mirrored run instead of the best; `endpoint` another Hub (else
        SEQTRACK_HF_ENDPOINT / HF_ENDPOINT, read at call time); `revision` (branch, tag such as
        run-1a2b3c4d, or commit) pins a mirrored run. The crop geometry the weights were trained
        with is in `model.tracker_settings` (TrackerConfig fields).
        """
        cfg, document, state, source = read_pretrained(
            pretrained_model_name_or_path, revision=revision, subfolder=subfolder, token=token,
            endpoint=endpoint, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, shapes_of=model_shapes)
        model = cls(cfg)
        load_strict(model, state, source)
        model.tracker_settings = {"template_size": cfg.template_size, "search_size": cfg.search_size,
                                  "num_templates": cfg.num_templates, **dict(document.get("tracker") or {})}
        return model.to(map_location).eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's weights hook: model.safetensors with the metadata {"format": "pt"} that
        transformers-style readers look for (shared tensors de-duplicated by safetensors)."""
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, token: Any = None,
                         map_location: str = "cpu", **kwargs: Any) -> "SeqTrack":
        """The mixin's loading hook: the same strict loading as `from_pretrained`."""
        return cls.from_pretrained(model_id, revision=revision, token=token or None, map_location=map_location)

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


# A config.json holds a few dozen keys; a larger one is not this project's.
def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of SeqTrack(cfg), without building it in memory."""
    return meta_shapes(lambda: SeqTrack(dataclasses.replace(cfg, pretrained="")))
