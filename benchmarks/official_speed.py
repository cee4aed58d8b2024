"""SeqTrack-B256 training speed: the official VideoX model vs ours, side by side in one process.

    git clone https://github.com/microsoft/VideoX /path/to/VideoX      # not vendored here
    python benchmarks/official_speed.py --videox /path/to/VideoX [--rounds 5] [--batch 2]

One training step = forward + cross entropy + backward + grad clip 0.1 + AdamW, batch 2, on
the same real crops and tokens:
- official: the VideoX SeqTrack modules (lib/models/seqtrack: ViT-B/16 encoder, decoder,
  SEQTRACK) built with the seqtrack_b256 values, at fp32, with torch.optim.AdamW as the
  official trainer builds it (torch's default implementation: a per-tensor loop on the CPU);
  the official actor's steps (encoder, then decoder on [START, box] tokens, plain cross entropy
  over the flattened logits) are written out here, since importing lib.train would pull in its
  tensorboard and data stack;
- ours: seqtrack_mlflow's model, actor and fused AdamW, at fp32 and bf16 autocast.
Both models get the same weights (ours loaded into the official one with strict=True, which
also checks the names) and the script prints how far their fp32 logits are apart.

The official model files import timm and torchvision only for things this step never calls
(ImageNet mean/std constants, DropPath at rate 0, a box-area helper, a version check); where
those packages are not installed, minimal stand-ins are registered and the script says so.
Steps are interleaved (A, B, C, C, B, A, ...) and the best round counts: other load only ever
slows a round down. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402  (benchmarks/speed.py: presets, real crops, timing helpers)

from seqtrack_mlflow.model import boxes_to_sequences  # noqa: E402


def stand_in_missing_packages() -> list[str]:
    """Register stand-ins for the timm/torchvision names the official model files import."""
    made = []
    if importlib.util.find_spec("timm") is None:
        timm = types.ModuleType("timm")
        data = types.ModuleType("timm.data")
        data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        models = types.ModuleType("timm.models")
        layers = types.ModuleType("timm.models.layers")

        class DropPath(torch.nn.Module):  # only built for drop_path > 0; B256 uses 0
            def __init__(self, p: float = 0.0):
                raise NotImplementedError("stand-in DropPath: install timm for drop_path > 0")

        layers.DropPath = DropPath
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
        layers.trunc_normal_ = torch.nn.init.trunc_normal_
        registry = types.ModuleType("timm.models.registry")
        registry.register_model = lambda fn: fn
        for m in (timm, data, models, layers, registry):
            sys.modules[m.__name__] = m
        made.append("timm")
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        boxes = types.ModuleType("torchvision.ops.boxes")
        boxes.box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        tv.__version__ = "0.99.0"  # misc.py only imports extra helpers for versions before 0.7
        for m in (tv, ops, boxes):
            sys.modules[m.__name__] = m
        made.append("torchvision")
    return made


def official_b256(videox: Path, cfg) -> torch.nn.Module:
    """The official SEQTRACK model with the seqtrack_b256 values of `cfg` (no pretrained download)."""
    sys.path.insert(0, str(videox / "SeqTrack"))
    from lib.models.seqtrack import vit as official_vit
    from lib.models.seqtrack.decoder import SeqTrackDecoder
    from lib.models.seqtrack.encoder import EncoderBase
    from lib.models.seqtrack.seqtrack import SEQTRACK

    m = cfg.model
    vit = official_vit.vit_base_patch16(pretrained=False, pretrain_type="mae", search_size=m.search_size,
                                        template_size=m.template_size, search_number=1,
                                        template_number=m.num_templates, drop_path_rate=m.drop_path,
                                        use_checkpoint=False)
    encoder = EncoderBase(vit, train_encoder=True, open_layers=[], num_channels=m.embed_dim)
    decoder = SeqTrackDecoder(d_model=m.decoder_dim, nhead=m.decoder_heads, num_decoder_layers=m.decoder_layers,
                              dim_feedforward=m.decoder_ffn, dropout=m.dropout, normalize_before=False,
                              return_intermediate_dec=False, bins=m.bins, num_frames=1)
    return SEQTRACK(encoder, decoder, hidden_dim=m.decoder_dim, bins=m.bins, feature_type="x",
                    num_frames=1, num_template=m.num_templates)


class OfficialStepper:
    """The official training step at fp32 on a fixed batch."""

    def __init__(self, model: torch.nn.Module, cfg, batch: dict[str, torch.Tensor]):
        self.model, self.cfg = model.train(), cfg
        self.images = [*batch["templates"].unbind(1), batch["search"]]  # templates precede the search
        self.seq_input, self.seq_target = boxes_to_sequences(batch["box"], cfg.model.bins)
        t = cfg.train
        groups = [{"params": [p for n, p in model.named_parameters() if "encoder" not in n]},
                  {"params": [p for n, p in model.named_parameters() if "encoder" in n],
                   "lr": t.lr * t.encoder_lr_mult}]
        self.opt = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)  # as the official trainer

    def logits(self) -> torch.Tensor:
        xz = self.model(images_list=self.images, mode="encoder")
        return self.model(xz=xz, seq=self.seq_input, mode="decoder")[-1]  # (B, 5, bins + 2)

    def step(self) -> speed.Timing:
        def body():
            out = self.logits()
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), self.seq_target.flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.opt.step()
        return speed.timed(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videox", required=True, type=Path, help="a clone of github.com/microsoft/VideoX")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    if not (args.videox / "SeqTrack" / "lib" / "models" / "seqtrack").is_dir():
        sys.exit(f"error: {args.videox} is not a VideoX clone (no SeqTrack/lib/models/seqtrack)")
    print(speed.machine_facts())
    made = stand_in_missing_packages()
    if made:
        print(f"stand-ins registered for {', '.join(made)} (not installed; the measured step does not use them)")

    cfg = speed.preset("seqtrack_b256")
    batch = speed.real_batch(cfg, args.batch)
    ours = {p: speed.Stepper(cfg, batch, p) for p in ("fp32", "bf16")}
    official = official_b256(args.videox, cfg)
    official.load_state_dict(ours["fp32"].model.state_dict(), strict=True)
    off = OfficialStepper(official, cfg, batch)
    for m in (official, ours["fp32"].model):
        m.eval()  # no dropout, so the two are comparable
    with torch.no_grad():
        templates = list(batch["templates"].unbind(1))
        gap = (off.logits() - ours["fp32"].model(templates, batch["search"], off.seq_input)).abs().max()
    for m in (official, ours["fp32"].model):
        m.train()
    print(f"same weights, eval mode: largest fp32 logit difference official vs ours {gap.item():.2e}\n", flush=True)

    fns = {"official fp32": off.step, "ours fp32": ours["fp32"].step, "ours bf16": ours["bf16"].step}
    for f in fns.values():
        f()  # warm-up: allocator, optimizer state
    t = speed.interleave(fns, args.rounds)
    base = speed.best(t["official fp32"])
    print(f"SeqTrack-B256 training step, batch {args.batch}, best of {args.rounds} interleaved rounds "
          f"(median in brackets), {torch.get_num_threads()} threads")
    print(speed.table([[name, f"{speed.best(ts) / args.batch:.2f} ({speed.median(ts) / args.batch:.2f})",
                        f"x{base / speed.best(ts):.2f}"] for name, ts in t.items()],
                      ["implementation", "s per sample", "speed vs official fp32"]))


if __name__ == "__main__":
    main()
