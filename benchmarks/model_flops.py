"""Parameters, analytic FLOPs and measured training-step time per sample, for each preset.

    python benchmarks/model_flops.py                      # default preset, batch 16
    python benchmarks/model_flops.py --preset seqtrack_b256 --batch 2 --steps 2
    python benchmarks/model_flops.py --precision bf16

A step is forward + loss + backward + grad clip + AdamW, as the trainer does. Other processes
on the machine inflate the time: the best of --steps timed steps (after one warm-up) is shown.
Also times greedy decoding with and without the key/value cache.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from seqtrack_mlflow.config import CONFIG_DIR, load_config
from seqtrack_mlflow.model import boxes_to_sequences, build_seqtrack, seqtrack_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="name of a configs/*.yaml file")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (best is reported)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(CONFIG_DIR / f"{args.preset}.yaml")
    m, t = cfg.model, cfg.train
    torch.manual_seed(0)
    model = build_seqtrack(m)
    opt = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_mult, t.weight_decay))
    B = args.batch
    templates = [torch.randn(B, 3, m.template_size, m.template_size) for _ in range(m.num_templates)]
    search = torch.randn(B, 3, m.search_size, m.search_size)
    seq_in, seq_tgt = boxes_to_sequences(torch.rand(B, 4) * 0.5 + 0.25, m.bins)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def step() -> float:
        t0 = time.perf_counter()
        with autocast:
            loss = seqtrack_loss(model(templates, search, seq_in), seq_tgt, m.bins)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up: allocator, kernels, optimizer state
    best = min(step() for _ in range(args.steps))
    flops = model.flops_per_sample()
    print(f"preset {args.preset}: {model.num_params() / 1e6:.2f} M parameters, "
          f"{flops / 1e9:.2f} GFLOP per training sample (fwd+bwd, analytic)")
    print(f"train step, batch {B}, {args.precision}, {torch.get_num_threads()} threads: "
          f"{best * 1e3:.0f} ms/step = {best / B * 1e3:.1f} ms/sample "
          f"({flops * B / best / 1e9:.0f} GFLOP/s achieved)")

    for cache in (False, True):
        model.predict(templates, search, use_cache=cache)
        t0 = time.perf_counter()
        model.predict(templates, search, use_cache=cache)
        print(f"predict batch {B}, cache={cache}: {(time.perf_counter() - t0) * 1e3:.0f} ms")
    memory = model.encode(templates, search).detach()
    for cache in (False, True):
        # Decoder-only cost: the part the cache accelerates.
        with torch.no_grad():
            model.eval()
            t0 = time.perf_counter()
            for _ in range(5):
                if cache:
                    kv = model.decoder.memory_kv(memory, model.pos_embed)
                    c, tok = None, seq_in[:, :1]
                    for _ in range(4):
                        _, c = model.decoder.step(tok, kv, c)
                else:
                    for i in range(1, 5):
                        model.decoder(memory, model.pos_embed, seq_in[:, :i])
        print(f"4-step decode only, cache={cache}: {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
