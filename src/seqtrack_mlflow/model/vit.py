"""SeqTrack encoder: a plain ViT over the concatenated search and template patches.

References:
- Dosovitskiy et al., "An Image Is Worth 16x16 Words", ICLR 2021 (the ViT block).
- Chen et al., "SeqTrack: Sequence to Sequence Learning for Visual Object Tracking", CVPR 2023,
  Sec. 3.2: one encoder sees [search, template_1, ..., template_T] tokens jointly.
- Official code: microsoft/VideoX, SeqTrack/lib/models/seqtrack/vit.py (timm-derived).

Fidelity notes (parameter names follow the official file so its checkpoints load strictly):
- no cls token; one learned `pos_embed` of length (search patches + one template's patches):
  the search image uses its first part, every template reuses the second part;
- pre-norm blocks, qkv with bias, LayerNorm eps 1e-6, GELU MLP, final `norm`;
- no dropout anywhere in the encoder (official drop_rate = attn_drop_rate = 0), optional
  stochastic depth (official MODEL.ENCODER.DROP_PATH = 0);
- init as timm: trunc_normal(0.02) for Linear weights and pos_embed, zero biases, unit norms,
  PyTorch's default for the patch conv.
The attention uses F.scaled_dot_product_attention, which is the same math as the official
softmax(q k^T / sqrt(d)) v and picks a fused kernel where one exists; bf16 on the CPU writes
the official form out, which is faster there (see Attention.forward).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> C-dim tokens (a strided conv, as in ViT)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.patch_size
        assert H % p == 0 and W % p == 0, f"image {H}x{W} is not a multiple of patch size {p}"
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, H/p * W/p, C), row-major patches


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out as the official vit.py: q (..., Nq, d), k and
    v (..., N, d) -> (..., Nq, d)."""
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (..., Nq, N)
    return attn.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (official names: qkv, proj)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """x (B, N, C) -> (B, Nq, C). Every token is a key and value; only the first
        Nq = num_queries (default: all N) are queries, i.e. get an output row."""
        B, N, C = x.shape
        h = self.num_heads
        nq = N if num_queries is None else num_queries
        # The official layout: qkv output is [q | k | v], each split into heads.
        qkv = self.qkv(x).view(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)  # (3, B, h, N, C/h)
        q, k, v = qkv.unbind(0)  # (B, h, N, C/h) each
        q = q[:, :, :nq]  # (B, h, Nq, C/h)
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # Under bf16 autocast the written-out form is exactly the official code's math, and
            # on the CPU it is x1.6 faster (forward + backward, b256's 768 tokens) than
            # PyTorch's flash kernel (benchmarks/speed.py, "attention" rows).
            y = explicit_attention(q, k, v)  # (B, h, Nq, C/h)
        else:
            y = F.scaled_dot_product_attention(q, k, v)  # (B, h, Nq, C/h), scale 1/sqrt(C/h)
        y = y.transpose(1, 2).reshape(B, nq, C)  # (B, Nq, C)
        return self.proj(y)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop the whole residual branch per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep  # rescale so the expectation is unchanged


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """x (B, N, C) -> (B, Nq, C): the first Nq = num_queries tokens (default all) updated,
        attending to all N tokens; the same rows as the full block would give."""
        nq = x.shape[1] if num_queries is None else num_queries
        x = x[:, :nq] + self.drop_path(self.attn(self.norm1(x), nq))  # (B, Nq, C)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, Nq, C)
        return x


class VisionTransformer(nn.Module):
    """ViT that encodes one search image and `num_templates` templates jointly.

    Tokens are ordered [search (Nx), template_1 (Nz), ..., template_T (Nz)], as the official
    `forward_features` concatenates them. The output is the search tokens (B, Nx, C), the only
    ones the decoder reads (official FEATURE_TYPE 'x'), so the last block computes only those
    rows: the template tokens are still its keys and values, and the search rows are the same
    as the full block's (b256 bf16: 6% less time per training step).
    """

    def __init__(self, search_size: int, template_size: int, patch_size: int, embed_dim: int,
                 depth: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 num_templates: int):
        super().__init__()
        assert search_size % patch_size == 0, f"search_size {search_size} % patch_size {patch_size} != 0"
        assert template_size % patch_size == 0, \
            f"template_size {template_size} % patch_size {patch_size} != 0"
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_templates = num_templates
        self.side_x = search_size // patch_size
        self.side_z = template_size // patch_size
        self.num_patches_search = self.side_x ** 2
        self.num_patches_template = self.side_z ** 2

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        # One table: first Nx rows for the search image, next Nz rows shared by all templates.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches_search + self.num_patches_template, embed_dim))
        # Linearly increasing stochastic depth, as timm/official ("dpr").
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # a list even under a meta default device
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, templates: list[torch.Tensor], search: torch.Tensor) -> torch.Tensor:
        assert len(templates) == self.num_templates, \
            f"expected {self.num_templates} templates, got {len(templates)}"
        nx = self.num_patches_search
        x = self.patch_embed(search)  # (B, Nx, C)
        assert x.shape[1] == nx, (f"search crop gives {x.shape[1]} patches, model expects {nx} "
                                  f"({self.side_x * self.patch_size}px)")
        x = x + self.pos_embed[:, :nx]  # (B, Nx, C)
        zs = []
        for z in templates:
            z = self.patch_embed(z)  # (B, Nz, C)
            assert z.shape[1] == self.num_patches_template, \
                f"template crop gives {z.shape[1]} patches, model expects {self.num_patches_template}"
            zs.append(z + self.pos_embed[:, nx:])  # templates share one position table
        xz = torch.cat([x, *zs], dim=1)  # (B, Nx + T*Nz, C)
        for block in self.blocks[:-1]:
            xz = block(xz)
        x = self.blocks[-1](xz, num_queries=nx)  # (B, Nx, C)
        return self.norm(x)  # (B, Nx, C)


def resize_pos_embed(pos_embed: torch.Tensor, new_side: int) -> torch.Tensor:
    """Bicubically resample a square grid of position embeddings to new_side x new_side.

    pos_embed: (1, side*side, C) in row-major patch order. Returns (1, new_side**2, C); the
    input itself when the size already matches (identity). Same call as the official
    `load_pretrained` (vit.py): F.interpolate(mode='bicubic', align_corners=True).
    """
    assert pos_embed.ndim == 3 and pos_embed.shape[0] == 1, f"want (1, N, C), got {tuple(pos_embed.shape)}"
    _, n, c = pos_embed.shape
    side = math.isqrt(n)
    assert side * side == n, f"{n} position embeddings do not form a square grid"
    if side == new_side:
        return pos_embed
    grid = pos_embed.reshape(1, side, side, c).permute(0, 3, 1, 2)  # (1, C, side, side)
    grid = F.interpolate(grid.float(), size=(new_side, new_side), mode="bicubic", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, c).to(pos_embed.dtype)  # (1, N', C)


def resize_encoder_pos_embed(pos_embed: torch.Tensor, num_search: int, side_x: int,
                             side_z: int) -> torch.Tensor:
    """Resize the encoder's [search | template] table to new grids side_x^2 and side_z^2.

    pos_embed: (1, num_search + Nz_old, C), where the first `num_search` rows belong to the
    search grid (as the official table). Each part is resampled on its own.
    """
    search, template = pos_embed[:, :num_search], pos_embed[:, num_search:]
    assert template.shape[1] > 0, "the table has no template part"
    return torch.cat([resize_pos_embed(search, side_x), resize_pos_embed(template, side_z)], dim=1)
