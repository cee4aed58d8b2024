"""The SeqTrack network: shapes, official names, loss, learning, decoding, loading."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pytest
import torch

from seqtrack_mlflow.config import ModelConfig, load_config
from seqtrack_mlflow.errors import CheckpointError
from seqtrack_mlflow.model import (
    SeqTrack,
    adapt_pos_embeds,
    boxes_to_sequences,
    build_seqtrack,
    end_token,
    load_official,
    official_key_shapes,
    resize_encoder_pos_embed,
    resize_pos_embed,
    seqtrack_loss,
    start_token,
    tokens_to_boxes,
)
from seqtrack_mlflow.model.vit import Attention

# A model small enough that a training step takes milliseconds; same architecture.
TINY = ModelConfig(patch_size=8, template_size=16, search_size=32, num_templates=2, embed_dim=32,
                   depth=2, num_heads=2, mlp_ratio=2.0, bins=32, decoder_dim=32, decoder_layers=2,
                   decoder_heads=2, decoder_ffn=64, dropout=0.1, drop_path=0.0, pretrained="")


def inputs(cfg: ModelConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    templates = [torch.randn(batch, 3, cfg.template_size, cfg.template_size, generator=g)
                 for _ in range(cfg.num_templates)]
    search = torch.randn(batch, 3, cfg.search_size, cfg.search_size, generator=g)
    box = torch.rand(batch, 4, generator=g) * 0.4 + 0.3  # inside the crop
    return templates, search, box


def build(cfg: ModelConfig = TINY, seed: int = 0) -> SeqTrack:
    torch.manual_seed(seed)
    return build_seqtrack(cfg)


@pytest.fixture(scope="module")
def b256() -> SeqTrack:
    cfg = load_config("seqtrack_b256").model
    return build(cfg)


# --- shapes ---------------------------------------------------------------------------------


def test_default_preset_shapes():
    cfg = load_config("default").model
    model = build(cfg)
    templates, search, box = inputs(cfg, 2)
    seq_in, _ = boxes_to_sequences(box, cfg.bins)
    logits = model(templates, search, seq_in)
    assert logits.shape == (2, 5, cfg.bins + 2) and logits.dtype == torch.float32
    tokens, conf = model.predict(templates, search)
    assert tokens.shape == (2, 4) and tokens.dtype == torch.long
    assert conf.shape == (2, 4) and ((conf > 0) & (conf <= 1)).all()
    assert ((tokens >= 0) & (tokens < cfg.bins)).all()


def test_b256_one_forward(b256):
    cfg = b256.cfg
    templates, search, box = inputs(cfg, 1)
    seq_in, _ = boxes_to_sequences(box, cfg.bins)
    with torch.no_grad():
        assert b256(templates, search, seq_in).shape == (1, 5, 4002)
    assert b256.encoder.body.pos_embed.shape == (1, 256 + 256, 768)  # search + one template


# --- official names -------------------------------------------------------------------------


def test_b256_state_dict_equals_official_key_list(b256):
    official = official_key_shapes()
    ours = {k: tuple(v.shape) for k, v in b256.state_dict().items()}
    assert list(ours) == list(official)  # same names, same order
    assert ours == official


def test_state_dict_from_official_key_list_loads_strictly():
    state = {k: torch.full(shape, 0.5) for k, shape in official_key_shapes().items()}
    model = load_official({"net": state})
    assert all((v == 0.5).all() for v in model.state_dict().values())


# --- tokenizer and loss ---------------------------------------------------------------------


def test_tokenizer_round_trip_within_one_bin():
    bins = 256
    box = torch.rand(64, 4, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    box[:, 2:] = box[:, 2:] * 0.4  # w, h small enough that the box stays inside [0, 1]
    seq_in, seq_tgt = boxes_to_sequences(box, bins)
    assert (seq_in[:, 0] == start_token(bins)).all() and (seq_tgt[:, 4] == end_token(bins)).all()
    assert torch.equal(seq_in[:, 1:], seq_tgt[:, :4])
    assert (tokens_to_boxes(seq_tgt[:, :4], bins) - box).abs().max() <= 1 / (bins - 1) + 1e-6


def test_tokenizer_quantises_as_official():
    bins = 17  # bin width 1/16: every value below is exact in binary floating point
    box = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.3125, 0.5, 0.25, 0.125], [0.0, 1.0, 0.5, 0.5]])
    _, seq_tgt = boxes_to_sequences(box, bins)
    # floor(x * (bins - 1)); the third box is clipped to the crop first (official actor).
    assert seq_tgt[:, :4].tolist() == [[8, 8, 16, 16], [5, 8, 4, 2], [2, 14, 4, 4]]

def test_nearest_labels_remove_the_half_bin_bias_of_floor():
    bins = 17  # bin width 1/16: every value below is exact in binary floating point
    box = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.34375, 0.5, 0.28125, 0.125], [0.0, 1.0, 0.5, 0.5]])
    _, seq_tgt = boxes_to_sequences(box, bins, "nearest")
    # floor(x * 16 + 0.5): 0.34375 * 16 = 5.5 -> 6 and 0.28125 * 16 = 4.5 -> 5 (floor gives 5, 4)
    assert seq_tgt[:, :4].tolist() == [[8, 8, 16, 16], [6, 8, 5, 2], [2, 14, 4, 4]]
    # Decoded as the tracker does (token / (bins - 1)): floor labels sit half a bin low on
    # average, nearest labels are centred on the true value.
    bins = 64
    box = torch.rand(4096, 4, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.3
    box[:, 2:] *= 0.5
    step = 1 / (bins - 1)
    for rounding, bias in (("floor", -0.5 * step), ("nearest", 0.0)):
        _, seq_tgt = boxes_to_sequences(box, bins, rounding)
        error = tokens_to_boxes(seq_tgt[:, :4], bins) - box  # uniform over one bin
        assert abs(error.mean().item() - bias) < 0.05 * step  # mean of 16384 uniform errors: std 0.0045 bin
        assert error.abs().max() <= (1.0 if rounding == "floor" else 0.5) * step + 1e-6



def test_loss_matches_hand_computation():
    bins = 3  # vocabulary: bins 0..2, END 3, START 4
    logits = torch.tensor([[[2.0, 0.0, 0.0, 0.0, 0.0],
                            [0.0, 1.0, 0.0, 0.0, 0.0],
                            [0.0, 0.0, 3.0, 0.0, 0.0],
                            [1.0, 1.0, 1.0, 1.0, 1.0],
                            [0.0, 0.0, 0.0, 2.0, 0.0]]])  # (1, 5, 5)
    target = torch.tensor([[0, 1, 2, 1, 3]])  # last target is END (weight 0.01)

    def nll(row, k):
        return math.log(sum(math.exp(v) for v in row)) - row[k]

    rows = logits[0].tolist()
    weights = [1.0, 1.0, 1.0, 1.0, 0.01]
    expected = sum(w * nll(r, k) for w, r, k in zip(weights, rows, target[0].tolist())) / sum(weights)
    assert seqtrack_loss(logits, target, bins).item() == pytest.approx(expected, rel=1e-6)


# --- learning, decoding, determinism --------------------------------------------------------


def test_one_batch_overfits():
    cfg = dataclasses.replace(TINY, dropout=0.0)
    model = build(cfg)
    templates, search, box = inputs(cfg, 4)
    seq_in, seq_tgt = boxes_to_sequences(box, cfg.bins)
    opt = torch.optim.AdamW(model.param_groups(2e-3, 1.0, 0.0))
    first = None
    for _ in range(300):
        loss = seqtrack_loss(model(templates, search, seq_in), seq_tgt, cfg.bins)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        if loss.item() < 0.1 * first:
            break
    assert loss.item() < 0.1 * first, f"loss {first:.3f} -> {loss.item():.3f}"
    tokens, _ = model.predict(templates, search)
    assert torch.equal(tokens, seq_tgt[:, :4])  # greedy decoding returns the memorised boxes


@pytest.mark.parametrize("window", [False, True])
def test_cached_and_uncached_decoding_agree(window):
    model = build()
    model.train()
    templates, search, _ = inputs(TINY, 8)
    t1, c1 = model.predict(templates, search, window=window, use_cache=True)
    t2, c2 = model.predict(templates, search, window=window, use_cache=False)
    assert torch.equal(t1, t2)
    torch.testing.assert_close(c1, c2)
    assert model.training, "predict must restore the training mode"


@pytest.mark.parametrize("window", [False, True])
def test_greedy_rule_and_confidence(window):
    model = build()
    templates, search, _ = inputs(TINY, 4)
    tokens, conf = model.predict(templates, search, window=window)
    # Replaying the chosen tokens teacher-forced gives each step's distribution.
    start = torch.full((4, 1), start_token(TINY.bins))
    model.eval()
    with torch.no_grad():
        probs = model(templates, search, torch.cat([start, tokens], 1)).softmax(-1)  # (B, 5, V)
    hann = torch.hann_window(TINY.bins, periodic=False)  # equals numpy.hanning(bins)
    for i in range(4):
        score = probs[:, i, :TINY.bins]  # END and START are never candidates
        if window and i < 2:  # cx, cy only
            score = score * hann
        best, arg = score.max(-1)
        assert torch.equal(arg, tokens[:, i])
        torch.testing.assert_close(conf[:, i], best, rtol=1e-4, atol=1e-7)


def test_forward_backward_deterministic():
    def run():
        model = build(seed=3)
        model.train()  # dropout on: randomness must come from the seeded generator only
        templates, search, box = inputs(TINY, 4)
        seq_in, seq_tgt = boxes_to_sequences(box, TINY.bins)
        torch.manual_seed(11)
        loss = seqtrack_loss(model(templates, search, seq_in), seq_tgt, TINY.bins)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (l1, g1), (l2, g2) = run(), run()
    assert torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_sdpa_attention_equals_plain_attention():
    torch.manual_seed(0)
    attn = Attention(48, 3)
    x = torch.randn(2, 10, 48)
    B, N, C = x.shape
    q, k, v = attn.qkv(x).view(B, N, 3, 3, C // 3).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
    weights = (q @ k.transpose(-2, -1) / math.sqrt(C // 3)).softmax(-1)  # (B, h, N, N)
    plain = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x), plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_encoder_output_is_the_search_rows_of_the_full_computation(precision):
    """The last block computes only the search rows: the same as running every block on all
    tokens (the official forward_features) and keeping the search tokens, gradients included."""
    model = build(TINY).eval()
    vit = model.encoder.body
    templates, search, _ = inputs(TINY, batch=2)

    def full(templates, search):
        nx = vit.num_patches_search
        zs = [vit.patch_embed(z) + vit.pos_embed[:, nx:] for z in templates]
        xz = torch.cat([vit.patch_embed(search) + vit.pos_embed[:, :nx], *zs], dim=1)
        for block in vit.blocks:
            xz = block(xz)  # every token updated, as the official code
        return vit.norm(xz)[:, :nx]

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        ours, reference = vit(templates, search), full(templates, search)
    assert ours.shape == (2, vit.num_patches_search, TINY.embed_dim)
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=0.02, atol=0.02)
    torch.testing.assert_close(ours.float(), reference.float(), **tol)
    grads = [torch.autograd.grad(f(templates, search).float().square().sum(), vit.blocks[-1].mlp.fc1.weight)[0]
             for f in (vit, full)]
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_bf16_cpu_attention_is_the_official_formula_under_autocast():
    """bf16 on the CPU takes the written-out path: bit-equal to the official vit.py lines run
    under bf16 autocast, within bf16 rounding of fp32, and gradients flow."""
    torch.manual_seed(0)
    attn = Attention(64, 2)
    x = torch.randn(2, 40, 64, requires_grad=True)
    B, N, C = x.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x)
        q, k, v = attn.qkv(x).reshape(B, N, 3, 2, C // 2).permute(2, 0, 3, 1, 4)
        official = (q @ k.transpose(-2, -1)) * (C // 2) ** -0.5  # official vit.py Attention
        official = attn.proj((official.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C))
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, official)
    torch.testing.assert_close(y.float(), attn(x), rtol=0.05, atol=0.02)
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- bookkeeping ----------------------------------------------------------------------------


def test_param_groups_split_encoder_and_cover_everything():
    model = build()
    groups = model.param_groups(1e-4, 0.1, 1e-4)
    assert [g["name"] for g in groups] == ["decoder", "encoder"]
    assert groups[0]["lr"] == 1e-4 and groups[1]["lr"] == pytest.approx(1e-5)
    assert all(g["weight_decay"] == 1e-4 for g in groups)  # official: decay on every parameter
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert sum(p.numel() for p in groups[1]["params"]) == sum(
        p.numel() for p in model.encoder.parameters())
    torch.optim.AdamW(groups)  # accepted as is


def test_flops_estimate_matches_counted_flops():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = dataclasses.replace(TINY, dropout=0.0)
    model = build(cfg)
    templates, search, box = inputs(cfg, 1)
    seq_in, seq_tgt = boxes_to_sequences(box, cfg.bins)
    # The math backend spells attention as matmuls, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        seqtrack_loss(model(templates, search, seq_in), seq_tgt, cfg.bins).backward()
    counted = counter.get_total_flops()
    # Autograd skips the gradient w.r.t. the input images, which the estimate includes.
    tokens = (cfg.search_size ** 2 + cfg.num_templates * cfg.template_size ** 2) // cfg.patch_size ** 2
    image_grad = 2 * tokens * 3 * cfg.patch_size ** 2 * cfg.embed_dim
    assert model.flops_per_sample() == pytest.approx(counted + image_grad, rel=0.01)
    assert model.num_params() == sum(p.numel() for p in model.parameters())


# --- position embeddings --------------------------------------------------------------------


def test_resize_pos_embed_identity_and_shapes():
    pe = torch.randn(1, 16, 8)
    assert resize_pos_embed(pe, 4) is pe
    assert resize_pos_embed(pe, 6).shape == (1, 36, 8)
    const = torch.full((1, 16, 8), 0.25)
    torch.testing.assert_close(resize_pos_embed(const, 7), torch.full((1, 49, 8), 0.25))
    table = torch.randn(1, 16 + 4, 8)  # [search 4x4 | template 2x2]
    out = resize_encoder_pos_embed(table, 16, side_x=8, side_z=3)
    assert out.shape == (1, 64 + 9, 8)
    torch.testing.assert_close(resize_encoder_pos_embed(table, 16, 4, 2), table)


def test_checkpoint_of_other_crop_sizes_is_resampled():
    small = build(TINY)
    bigger = dataclasses.replace(TINY, template_size=24, search_size=48)
    model = load_official(small.state_dict(), bigger)
    assert model.encoder.body.pos_embed.shape == (1, 36 + 9, TINY.embed_dim)
    assert model.pos_embed.shape == (1, 36, TINY.decoder_dim)
    same = adapt_pos_embeds(small.state_dict(), small)
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in same.items())


def test_pretrained_encoder_loads_mae_style_weights(tmp_path):
    donor = build(TINY, seed=5).encoder.body
    side = 14  # MAE: 224 / 16 grid, with a cls token in front
    state = {k: v for k, v in donor.state_dict().items() if k != "pos_embed"}
    state["pos_embed"] = torch.randn(1, 1 + side * side, TINY.embed_dim)
    state["cls_token"] = torch.zeros(1, 1, TINY.embed_dim)
    state["head.weight"] = torch.zeros(10, TINY.embed_dim)
    path = tmp_path / "mae.pth"
    torch.save({"model": state}, path)
    model = build(dataclasses.replace(TINY, pretrained=str(path)))
    body = model.encoder.body
    torch.testing.assert_close(body.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)
    want = resize_pos_embed(state["pos_embed"][:, 1:], body.side_x)
    torch.testing.assert_close(body.pos_embed[:, :body.num_patches_search], want)


# --- official checkpoints and their errors --------------------------------------------------


def test_load_official_reads_pth_tar_with_trainer_bookkeeping(tmp_path, monkeypatch):
    # The official trainer pickles its Settings and stats objects next to 'net'; build a file
    # holding such objects under their official module names.
    for name in ("lib", "lib.train", "lib.train.admin", "lib.train.admin.settings"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    Settings = type("Settings", (), {"__module__": "lib.train.admin.settings"})
    sys.modules["lib.train.admin.settings"].Settings = Settings
    settings = Settings()
    settings.project_path = "train/seqtrack/seqtrack_b256"
    donor = build(TINY, seed=2)
    path = tmp_path / "SEQTRACK_ep0500.pth.tar"
    torch.save({"epoch": 500, "net_type": "SEQTRACK", "net": donor.state_dict(), "settings": settings,
                "stats": None, "net_info": None, "constructor": None}, path)
    monkeypatch.delitem(sys.modules, "lib.train.admin.settings")  # nothing of it is importable
    model = load_official(path, TINY)
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in model.state_dict().items())


class NotAllowed:
    pass


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape", "truncated", "text", "absent",
                                  "unknown_object", "no_state_dict"])
def test_load_official_errors(case, tmp_path):
    state = build(TINY).state_dict()
    source = tmp_path / "ckpt.pth.tar"
    if case == "missing":
        del state["decoder.body.layers.0.linear1.weight"]
    elif case == "unexpected":
        state["decoder.extra.weight"] = torch.zeros(1)
    elif case == "shape":
        state["bottleneck.weight"] = torch.zeros(3, 3)
    if case in ("missing", "unexpected", "shape"):
        source = {"net": state}
    elif case == "truncated":
        torch.save({"net": state}, source)
        data = source.read_bytes()
        source.write_bytes(data[: len(data) // 2])
    elif case == "text":
        source.write_text("not a checkpoint\n")
    elif case == "unknown_object":
        torch.save({"net": state, "extra": NotAllowed()}, source)
    elif case == "no_state_dict":
        torch.save({"epoch": 3}, source)
    with pytest.raises(CheckpointError) as err:
        load_official(source, TINY)
    message = str(err.value)
    if case == "missing":
        assert "missing" in message and "linear1.weight" in message
    elif case == "shape":
        assert "bottleneck.weight" in message and "(3, 3)" in message
    elif case == "unknown_object":
        assert "NotAllowed" in message
