"""Training, data, inference and matmul speed on this machine, all measured side by side.

    python benchmarks/speed.py            # 3 min on 2 idle CPU cores, up to ~12 min when shared
    python benchmarks/speed.py --quick    # 3 rounds, smaller matmul
    python benchmarks/speed.py --no-compile

Every comparison runs in ONE process, interleaved (A, B, B, A, A, B, ...), and is reported as a
ratio and as the best of N rounds: other processes on a shared machine only ever make a
measurement slower, so the best round is the least disturbed one. Absolute numbers from
different runs of this script are not comparable; the ratios printed within one run are.

What is measured:
- matmul peak: a large torch.matmul at fp32 and bf16 (GFLOP/s), the yardstick for the model's
  achieved FLOP rate (model.flops_per_sample(), analytic fwd + bwd matmul FLOPs);
- training: forward + loss + backward + grad clip + AdamW step through the real actor and
  model (the body of Trainer._train_epoch), on real crops from TrainSamples, for the default
  preset (batch 16) and the official seqtrack_b256 (batch 2), each at fp32 and under bf16
  autocast (train.device.autocast); plus the AdamW step alone, torch's for-loop vs fused kernel;
- data: TrainSamples.__getitem__ alone (decode + crops + transforms, one process), and its
  share of a step if loaded in the training process;
- attention alone: the encoder's self-attention, forward + backward, at each preset's shape:
  PyTorch's scaled_dot_product_attention (its CPU flash kernel) vs the official formula
  written out (vit.py uses SDPA at fp32 and the written-out form for bf16 on the CPU);
- inference: model.predict at batch 1 with and without the decoder's key/value cache (whole
  frame and decode only), and that both give identical tokens;
- torch.compile of the default preset: cold compile seconds, warm step speedup, and whether
  it pays for itself over the 5-epoch main job (5 x the default preset's samples per epoch).
Not a test: numbers depend on the machine. Replaces the former benchmarks/model_flops.py;
benchmarks/data_pipeline.py has the data pipeline's design measurements (decoders, caches).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

# A fresh inductor cache, so the torch.compile figure is a true cold compile (set before torch).
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="speed-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqtrack_mlflow.config import Config, load_config  # noqa: E402
from seqtrack_mlflow.data.dataset import open_dataset  # noqa: E402
from seqtrack_mlflow.data.sampler import TrainSamples, ValidationSamples  # noqa: E402
from seqtrack_mlflow.model import build_seqtrack  # noqa: E402
from seqtrack_mlflow.model.vit import explicit_attention  # noqa: E402
from seqtrack_mlflow.train.actor import SeqTrackActor  # noqa: E402
from seqtrack_mlflow.train.loop import train_step  # noqa: E402
from seqtrack_mlflow.train.optim import build_optimizer  # noqa: E402

CPU = torch.device("cpu")
MAIN_JOB_SAMPLES = 5 * load_config("default").data.samples_per_epoch  # the default `mlflow run . -P epochs=5`
B256_TARGET_S = 1.5  # seconds per training sample (official VideoX code: ~4.6 s, DESIGN.md)
CACHE_TARGET = 1.5  # KV-cache decode speedup


# -- measuring -------------------------------------------------------------------------------------
class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # process CPU seconds, all threads

    def per(self, n: int) -> Timing:
        return Timing(self.wall / n, self.cpu / n)


def interleave(fns: dict[str, Callable[[], Timing]], rounds: int) -> dict[str, list[Timing]]:
    """Run each fn once per round, order A,B,.. then ..,B,A (ABBA cancels slow drifts).

    Each fn returns the Timing of the unit it measures (so setup can be left out)."""
    times: dict[str, list[Timing]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(fns[name]())
    return times


def best(ts: list[Timing]) -> float:
    """Wall seconds of the least disturbed round."""
    return min(t.wall for t in ts)


def median(ts: list[Timing]) -> float:
    return sorted(t.wall for t in ts)[len(ts) // 2]


def load_free(ts: list[Timing]) -> float:
    """CPU seconds / threads: what the wall time would be if every thread had a core to itself
    and ran fully parallel. Other load inflates wall time, hardly CPU time, so this estimates
    an idle machine; serial parts (Python, the optimizer) make it a lower bound."""
    return min(t.cpu for t in ts) / torch.get_num_threads()


def timed(fn: Callable[[], object]) -> Timing:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - w, time.process_time() - c)


# -- the things measured ---------------------------------------------------------------------------
def preset(name: str) -> Config:
    """A preset on the bundled sample data (its crops are as large as real LaSOT's)."""
    return load_config(name, {"data.source": "sample",
                                                     "data.classes": "airplane,bicycle", "data.root": ""})


def real_batch(cfg: Config, batch: int) -> dict[str, torch.Tensor]:
    samples = TrainSamples(open_dataset(cfg.data), cfg, epoch=1)
    items = [samples[i] for i in range(batch)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def make_optimizer(model, cfg: Config, fused: bool) -> torch.optim.AdamW:
    """The trainer's AdamW (fused) or torch's CPU for-loop variant, for the comparison."""
    t = cfg.train
    return torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_mult, t.weight_decay), lr=t.lr,
                             weight_decay=t.weight_decay, fused=fused, foreach=False)


class Stepper:
    """One model + optimizer; step() = the trainer's step body on a fixed batch (seconds)."""

    def __init__(self, cfg: Config, batch: dict[str, torch.Tensor], precision: str, compile_: bool = False):
        torch.manual_seed(cfg.seed)
        self.cfg, self.batch, self.precision = cfg, batch, precision
        self.model = build_seqtrack(cfg.model).train()
        forward = torch.compile(self.model) if compile_ else self.model
        self.actor = SeqTrackActor(forward, cfg.model.bins)
        self.opt, _ = build_optimizer(self.model, cfg.train)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.train_cfg = dataclasses.replace(cfg.train, precision=precision)
        self.losses: list[float] = []

    def step(self) -> Timing:
        w, c = time.perf_counter(), time.process_time()
        loss, _ = train_step(self.actor, self.model, self.opt, self.scaler, self.batch, CPU, self.train_cfg)
        t = Timing(time.perf_counter() - w, time.process_time() - c)
        self.losses.append(float(loss.detach()))  # after the clock: the trainer syncs per block
        return t


def adamw_steps(cfg: Config) -> dict[str, Callable[[], Timing]]:
    """The AdamW update alone, for-loop vs fused kernel, on the preset's parameters."""
    torch.manual_seed(0)
    fns = {}
    for fused in (False, True):
        model = build_seqtrack(cfg.model)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt = make_optimizer(model, cfg, fused=fused)
        opt.step()  # allocate the state
        # best of 5 per round: a single update is short, so one load spike would swamp it
        fns["fused" if fused else "for-loop"] = lambda opt=opt: min((timed(opt.step) for _ in range(5)),
                                                                    key=lambda t: t.wall)
    return fns


def attention_fns(cfg: Config, batch: int) -> dict[str, Callable[[], Timing]]:
    """Encoder self-attention alone (forward + backward) at the preset's shape, SDPA vs written out."""
    m = cfg.model
    tokens = (m.search_size // m.patch_size) ** 2 + m.num_templates * (m.template_size // m.patch_size) ** 2
    shape = (batch, m.num_heads, tokens, m.embed_dim // m.num_heads)
    torch.manual_seed(0)
    fns = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(shape, dtype=dtype)
        for impl, attend in (("sdpa", torch.nn.functional.scaled_dot_product_attention),
                             ("explicit", explicit_attention)):
            fns[f"{precision}/{impl}"] = (lambda attend=attend, q=q, k=k, v=v, grad=grad:
                                          timed(lambda: attend(q, k, v).backward(grad)))
    for f in fns.values():
        f()  # warm-up
    return fns


def matmul(n: int, dtype: torch.dtype) -> Callable[[], Timing]:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    return lambda: timed(lambda: torch.matmul(a, b))


def inference_fns(cfg: Config, frames: list[dict[str, torch.Tensor]]):
    """predict() at batch 1 (Hanning window on, as the tracker), with and without the cache,
    per whole frame and per decode only (encode() replaced by the frame's cached memory)."""
    torch.manual_seed(cfg.seed)
    model = build_seqtrack(cfg.model).eval()
    inputs = [([t[None] for t in f["templates"]], f["search"][None]) for f in frames]
    same = all(torch.equal(model.predict(*x, window=True, use_cache=True)[0],
                           model.predict(*x, window=True, use_cache=False)[0]) for x in inputs)
    x = inputs[0]
    with torch.no_grad():
        memory = model.encode(*x)
    decoder_only = build_seqtrack(cfg.model).eval()
    decoder_only.load_state_dict(model.state_dict())
    decoder_only.encode = lambda templates, search: memory  # the decode loop of predict() alone
    def best_of(fn: Callable[[], object], k: int) -> Callable[[], Timing]:
        return lambda: min((timed(fn) for _ in range(k)), key=lambda t: t.wall)

    k = 3 if cfg.model.embed_dim < 512 else 1  # whole frames: a few per round when cheap
    fns = {f"frame cache={c}": best_of(lambda c=c: model.predict(*x, window=True, use_cache=c), k)
           for c in (False, True)}
    fns.update({f"decode cache={c}": best_of(lambda c=c: decoder_only.predict(*x, window=True, use_cache=c), 10)
                for c in (False, True)})
    for f in fns.values():
        f()  # warm-up
    return fns, same


# -- report ----------------------------------------------------------------------------------------
def machine_facts() -> str:
    flags: set[str] = set()
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    amx = sorted(f for f in flags if f.startswith("amx"))
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    return (f"machine: {model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}), "
            f"python {platform.python_version()}\n"
            f"cpu flags: amx: {' '.join(amx) or 'none'}; avx512: {' '.join(avx512) or 'none'}")


def table(rows: list[list[str]], header: list[str]) -> str:
    cols = list(zip(header, *rows))
    w = [max(len(str(c)) for c in col) for col in cols]
    line = lambda r: "| " + " | ".join(str(c).ljust(n) for c, n in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (n + 2) for n in w) + "|", *map(line, rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and a smaller matmul")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 5, quick 3)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    t_all = time.perf_counter()
    print(machine_facts())
    print(f"method: every comparison interleaved in this one process, best of {rounds} rounds "
          f"(median in brackets where shown); other load only slows a round down\n", flush=True)

    # 1. training steps, data pipeline and the matmul peak, all interleaved
    presets = {"default": (preset("default"), 16), "seqtrack_b256": (preset("seqtrack_b256"), 2)}
    steppers, data_fns, batches = {}, {}, {}
    for name, (cfg, bsz) in presets.items():
        batches[name] = real_batch(cfg, bsz)
        for precision in ("fp32", "bf16"):
            steppers[(name, precision)] = Stepper(cfg, batches[name], precision)
        samples = TrainSamples(open_dataset(cfg.data), cfg, epoch=1)
        data_fns[name] = lambda s=samples: timed(lambda: [s[i] for i in range(16)]).per(16)  # per sample
    for s in steppers.values():
        s.step()  # warm-up: allocator, kernels, optimizer state
    # A default step is short: take the best of 3 per round, so brief load spikes wash out.
    fns = {f"{n}/{p}": (lambda s=s, k=3 if n == "default" else 1: min((s.step() for _ in range(k)),
                                                                      key=lambda t: t.wall))
           for (n, p), s in steppers.items()}
    fns.update({f"data/{n}": f for n, f in data_fns.items()})
    n = 2048 if args.quick else 4096
    fns.update({f"matmul/{p}": matmul(n, dt) for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))})
    t = interleave(fns, rounds)
    peak = {p: 2 * n ** 3 / best(t[f"matmul/{p}"]) / 1e9 for p in ("fp32", "bf16")}
    peak_free = {p: 2 * n ** 3 / load_free(t[f"matmul/{p}"]) / 1e9 for p in ("fp32", "bf16")}
    print(f"matmul {n}x{n} (interleaved with the steps below): fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s (bf16/fp32 x{peak['bf16'] / peak['fp32']:.2f}); "
          f"load-free estimate fp32 {peak_free['fp32']:.0f}, bf16 {peak_free['bf16']:.0f}\n")
    opt_t = {name: interleave(adamw_steps(cfg), rounds) for name, (cfg, _) in presets.items()}
    attn_t = {name: interleave(attention_fns(cfg, bsz), rounds) for name, (cfg, bsz) in presets.items()}

    rows = []
    per_sample, per_sample_free = {}, {}
    for (name, precision), s in steppers.items():
        cfg, bsz = presets[name]
        ts = t[f"{name}/{precision}"]
        sec = best(ts) / bsz
        per_sample[(name, precision)] = sec
        per_sample_free[(name, precision)] = load_free(ts) / bsz
        flops = s.model.flops_per_sample()
        achieved = flops / sec / 1e9
        rows.append([name, bsz, precision, f"{bsz / best(ts):.2f} ({bsz / median(ts):.2f})",
                     f"{sec * 1e3:.1f}", f"{load_free(ts) / bsz * 1e3:.1f}", f"{flops / 1e9:.2f}",
                     f"{achieved:.0f}", f"{achieved / peak[precision]:.0%}"])
    print("training step = forward + loss + backward + clip + AdamW (fused), real crops, "
          f"{torch.get_num_threads()} threads")
    print(table(rows, ["preset", "batch", "precision", "samples/s best (median)", "ms/sample",
                       "load-free ms/sample", "GFLOP/sample", "GFLOP/s", "of matmul peak"]))
    for (name, precision), s in steppers.items():
        if precision == "fp32":
            print(f"{name}: {s.model.num_params() / 1e6:.2f} M parameters, "
                  f"{s.model.flops_per_sample() / 1e9:.2f} GFLOP per training sample (analytic, fwd + bwd)")
    for name in presets:
        r = per_sample[(name, "fp32")] / per_sample[(name, "bf16")]
        rf = per_sample_free[(name, "fp32")] / per_sample_free[(name, "bf16")]
        print(f"{name}: bf16 autocast is x{r:.2f} the fp32 speed (load-free estimate x{rf:.2f})")
    for name, ts in opt_t.items():
        loop, fused = best(ts["for-loop"]), best(ts["fused"])
        print(f"{name}: AdamW step alone {loop * 1e3:.1f} ms for-loop vs {fused * 1e3:.1f} ms fused "
              f"(x{loop / fused:.1f}; {(loop - fused) / per_sample[(name, 'fp32')] / presets[name][1]:.0%}"
              f" of an fp32 step)")
    rows = []
    for name, ts in attn_t.items():
        for precision in ("fp32", "bf16"):
            sdpa, explicit = best(ts[f"{precision}/sdpa"]), best(ts[f"{precision}/explicit"])
            used = "explicit" if precision == "bf16" else "sdpa"
            rows.append([name, precision, f"{sdpa * 1e3:.1f}", f"{explicit * 1e3:.1f}",
                         f"x{sdpa / explicit:.2f}", used])
    print("\nencoder self-attention alone, forward + backward, one layer at the preset's batch and tokens")
    print(table(rows, ["preset", "precision", "SDPA ms", "written out ms", "written out speed",
                       "vit.py uses"]))
    print()
    rows = []
    for name in presets:
        d = best(t[f"data/{name}"])
        rows.append([name, f"{1 / d:.0f}", f"{d * 1e3:.2f}",
                     f"{d / (d + per_sample[(name, 'fp32')]):.1%}", f"{d / (d + per_sample[(name, 'bf16')]):.1%}"])
    print("data pipeline alone (TrainSamples, 1 process; share = data / (data + step) when loaded in the "
          "training process, workers=0)")
    print(table(rows, ["preset", "samples/s", "ms/sample", "share of fp32 step", "share of bf16 step"]))
    print(flush=True)
    del steppers

    # 3. inference
    rows, identical = [], {}
    for name, (cfg, _) in presets.items():
        val = ValidationSamples(open_dataset(cfg.data), dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, val_samples=8)))
        fns, identical[name] = inference_fns(cfg, [val[i] for i in range(len(val))])
        ti = interleave(fns, rounds)
        f0, f1 = best(ti["frame cache=False"]), best(ti["frame cache=True"])
        d0, d1 = best(ti["decode cache=False"]), best(ti["decode cache=True"])
        rows.append([name, f"{1 / f0:.1f}", f"{1 / f1:.1f}", f"x{f0 / f1:.2f}", f"{d0 * 1e3:.2f}",
                     f"{d1 * 1e3:.2f}", f"x{d0 / d1:.2f}", "yes" if identical[name] else "NO"])
    print("inference: predict() batch 1, fp32, Hanning window, 4 greedy steps; decode = predict() "
          "with the encoder output given")
    print(table(rows, ["preset", "fps no cache", "fps cache", "frame ratio", "decode ms no cache",
                       "decode ms cache", "decode ratio", "tokens identical (8 frames)"]))
    decode_ratio = {r[0]: float(r[6][1:]) for r in rows}
    print(flush=True)

    # 4. torch.compile
    compile_line = "torch.compile: skipped (--no-compile)"
    if not args.no_compile:
        cfg, bsz = presets["default"]
        eager = Stepper(cfg, batches["default"], "fp32")
        eager.step()
        compiled = Stepper(cfg, batches["default"], "fp32", compile_=True)
        try:
            first = compiled.step().wall
            second = compiled.step().wall
        except Exception as exc:  # noqa: BLE001 - report, do not crash the benchmark
            compile_line = f"torch.compile: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        else:
            tc = interleave({"eager": eager.step, "compiled": compiled.step}, 3 * rounds)
            te, tcmp = best(tc["eager"]), best(tc["compiled"])
            cold = first + second - 2 * tcmp
            saved = (te - tcmp) / bsz * MAIN_JOB_SAMPLES
            compile_line = (
                f"torch.compile (default preset, fp32, batch {bsz}): cold compile {cold:.1f} s "
                f"(first step {first:.1f} s); warm step eager {te * 1e3:.0f} ms vs compiled "
                f"{tcmp * 1e3:.0f} ms = x{te / tcmp:.2f}; over the 5-epoch main job "
                f"({MAIN_JOB_SAMPLES} samples) it saves {saved:.0f} s against {cold:.0f} s of compiling: "
                + ("PAYS" if saved > cold else "does NOT pay"))
    print(compile_line + "\n")

    # 5. targets
    b256, b256_free = per_sample[("seqtrack_b256", "bf16")], per_sample_free[("seqtrack_b256", "bf16")]
    main_fp32, main_bf16 = per_sample[("default", "fp32")], per_sample[("default", "bf16")]
    verdict = ("MET" if b256 <= B256_TARGET_S else
               f"MISSED under this load; load-free estimate {b256_free:.2f} s "
               + ("meets it" if b256_free <= B256_TARGET_S else "misses it too"))
    print("targets")
    print(f"- seqtrack_b256 training, batch 2, bf16: {b256:.2f} s/sample (fp32 "
          f"{per_sample[('seqtrack_b256', 'fp32')]:.2f}) vs target <= {B256_TARGET_S} s "
          f"(official VideoX fp32 ~4.6 s): {verdict}")
    print(f"- default 5-epoch main job, model steps only: fp32 {main_fp32 * MAIN_JOB_SAMPLES / 60:.1f} min, "
          f"bf16 {main_bf16 * MAIN_JOB_SAMPLES / 60:.1f} min (bf16/fp32 speed x{main_fp32 / main_bf16:.2f}; "
          "data, validation and checkpoints come on top)")
    ok = all(v >= CACHE_TARGET for v in decode_ratio.values()) and all(identical.values())
    print(f"- KV-cache decoding: x{min(decode_ratio.values()):.2f} - x{max(decode_ratio.values()):.2f} "
          f"faster, identical tokens: {all(identical.values())}; target >= x{CACHE_TARGET}: "
          f"{'MET' if ok else 'MISSED'}")
    print(f"\n(benchmark wall time {time.perf_counter() - t_all:.0f} s)")


if __name__ == "__main__":
    main()
