"""SeqTrack decoder: a DETR-style post-norm transformer decoder over box tokens.

References:
- Chen et al., "SeqTrack", CVPR 2023, Sec. 3.3: causal decoder reading the search features.
- Carion et al., "End-to-End Object Detection with Transformers" (DETR), ECCV 2020: the layer
  (post-norm, query position added to q and k, memory position added to the cross-attn keys).
- Official code: microsoft/VideoX, SeqTrack/lib/models/seqtrack/decoder.py.

Fidelity notes:
- Parameter names and layouts equal the official ones (`embedding.word_embeddings`,
  `embedding.position_embeddings`, `embedding.LayerNorm`, `body.layers.N.self_attn.in_proj_weight`
  ... `body.norm`), so official checkpoints load strictly. The attention module keeps
  nn.MultiheadAttention's parameter layout (in_proj_weight = [Wq; Wk; Wv], out_proj) but is
  our own, batch-first, on F.scaled_dot_product_attention, with a key/value cache.
- The input embedding is LayerNorm(word_embedding(token)) + dropout; the learned position
  embedding is not added to the input but used as the query position of every attention, as
  in the official code.
- Init: xavier_uniform on every matrix of the decoder, as the official `_reset_parameters`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Self-attention cache of one layer: (keys, values), each (B, h, t, d) for the t tokens so far.
LayerCache = tuple[torch.Tensor, torch.Tensor]


class DecoderEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_len: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)  # used as query_pos, see forward
        self.LayerNorm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.LayerNorm(self.word_embeddings(seq)))  # (B, L, D)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters and math, batch-first, with key/value reuse.

    `project(x, which)` applies one of the three input projections; `attend(q, k, v)` takes
    already projected tensors, so callers can cache projected keys and values.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout  # on the attention weights, as nn.MultiheadAttention(dropout=...)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # [Wq; Wk; Wv]
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's own init
        nn.init.zeros_(self.out_proj.bias)

    def project(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """which = 0, 1, 2 for q, k, v. x: (B, L, D) -> (B, h, L, D/h)."""
        B, L, D = x.shape
        w = self.in_proj_weight[which * D:(which + 1) * D]  # (D, D)
        b = self.in_proj_bias[which * D:(which + 1) * D]  # (D,)
        return F.linear(x, w, b).view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               causal: bool = False) -> torch.Tensor:
        """q: (B, h, Lq, d), k and v: (B, h, Lk, d) -> (B, Lq, D) after out_proj."""
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)  # (B, h, Lq, d)
        B, h, Lq, d = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, Lq, h * d))  # (B, Lq, D)


class DecoderLayer(nn.Module):
    """Post-norm layer (official normalize_before=False): self-attn, cross-attn, ReLU FFN."""

    def __init__(self, dim: int, num_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, dropout)
        self.multihead_attn = MultiheadAttention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor, pos: torch.Tensor) -> LayerCache:
        """Cross-attention keys (memory + pos) and values (memory): fixed for a whole decode."""
        a = self.multihead_attn
        return a.project(memory + pos, 1), a.project(memory, 2)  # (B, h, N, d) each

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, mem_kv: LayerCache,
                cache: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache]:
        """x, query_pos: (B, L, D) for the L newest positions.

        Without a cache, x holds the whole sequence and attention is causal. With a cache of
        t earlier positions, x holds the next positions only; they see all cached keys (the
        earlier positions' keys do not depend on later tokens, so caching is exact).
        Returns the layer output (B, L, D) and the cache extended by these L positions.
        """
        sa = self.self_attn
        qk_in = x + query_pos  # DETR: position on queries and keys, not on values
        q, k, v = sa.project(qk_in, 0), sa.project(qk_in, 1), sa.project(x, 2)  # (B, h, L, d)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, h, t + L, d)
            v = torch.cat([cache[1], v], dim=2)
            # Multi-token steps on top of a cache would need an offset mask; greedy uses L=1.
            assert x.shape[1] == 1, "cached decoding feeds one token per step"
            y = sa.attend(q, k, v, causal=False)  # the newest query may see every cached key
        else:
            y = sa.attend(q, k, v, causal=True)  # (B, L, D)
        x = self.norm1(x + self.dropout1(y))  # (B, L, D)

        ca = self.multihead_attn
        y = ca.attend(ca.project(x + query_pos, 0), *mem_kv)  # (B, L, D)
        x = self.norm2(x + self.dropout2(y))
        y = self.linear2(self.dropout(F.relu(self.linear1(x))))  # (B, L, D)
        x = self.norm3(x + self.dropout3(y))
        return x, (k, v)


class TransformerDecoder(nn.Module):
    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)


class SeqTrackDecoder(nn.Module):
    """Tokens (B, L) + memory (B, N, D) -> hidden states (B, L, D), causal over L."""

    def __init__(self, bins: int, dim: int, num_layers: int, num_heads: int, ffn: int,
                 dropout: float, max_len: int = 5):
        super().__init__()
        # Official max_position_embeddings = (4 coordinates + 1) * number of search frames (1).
        self.max_len = max_len
        self.embedding = DecoderEmbeddings(bins + 2, dim, max_len, dropout)
        self.body = TransformerDecoder(dim, num_layers, num_heads, ffn, dropout)
        for p in self.parameters():  # official SeqTrackDecoder._reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def memory_kv(self, memory: torch.Tensor, pos: torch.Tensor) -> list[LayerCache]:
        return [layer.memory_kv(memory, pos) for layer in self.body.layers]

    def forward(self, memory: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass. memory: (B, N, D), pos: (1 or B, N, D), seq: (B, L) tokens."""
        L = seq.shape[1]
        assert L <= self.max_len, f"sequence of {L} tokens exceeds the {self.max_len} positions"
        x = self.embedding(seq)  # (B, L, D)
        query_pos = self.embedding.position_embeddings.weight[:L].unsqueeze(0)  # (1, L, D)
        for layer, mem_kv in zip(self.body.layers, self.memory_kv(memory, pos)):
            x, _ = layer(x, query_pos, mem_kv)
        return self.body.norm(x)  # (B, L, D)

    def step(self, token: torch.Tensor, mem_kv: list[LayerCache],
             cache: list[LayerCache] | None) -> tuple[torch.Tensor, list[LayerCache]]:
        """One cached decoding step. token: (B, 1), the token at position t = len(cache)."""
        t = 0 if cache is None else cache[0][0].shape[2]
        assert t < self.max_len, f"position {t} exceeds the {self.max_len} positions"
        x = self.embedding(token)  # (B, 1, D)
        query_pos = self.embedding.position_embeddings.weight[t:t + 1].unsqueeze(0)  # (1, 1, D)
        new_cache = []
        for i, (layer, kv) in enumerate(zip(self.body.layers, mem_kv)):
            # The first step has no cache: a one-token causal pass, which is the same thing.
            x, layer_cache = layer(x, query_pos, kv, None if cache is None else cache[i])
            new_cache.append(layer_cache)
        return self.body.norm(x), new_cache  # (B, 1, D)
