"""Fine-tuning from given weights vs the same training from scratch, side by side.

    python benchmarks/warm_start.py --init outputs/<RUN_ID>/checkpoints/epoch_5.ckpt
    python benchmarks/warm_start.py --init <RUN_ID> --samples 2000 --epochs 1
    python benchmarks/warm_start.py --init someone/seqtrack@run-1a2b3c4d --no-evaluate

Two jobs of the real trainer, each in its own process (`python -m seqtrack_mlflow train`, what
the MLproject's main entry point runs), with the same preset, seed and samples: one with
`--init <source>` (weights only: fresh optimizer and schedule, epoch 1), one from the random
init. Then, unless --no-evaluate, both last checkpoints track the held-out sequences
(`evaluate --checkpoint`). Printed per job: wall time, last training loss, validation IoU per
epoch (and the no-motion bar), and LaSOT AUC / P / Pnorm beside the static first-frame box.

The jobs log to the current tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db) in the
experiment `warm-start-benchmark`, so a run id or models:/ source is looked up there too.
Not a test: numbers depend on the machine (name the CPU beside them).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
EXPERIMENT = "warm-start-benchmark"
_OVERALL = re.compile(r"overall: AUC\s+([\d.]+)\s+P\s+([\d.]+)\s+Pnorm\s+([\d.]+)")
_STATIC = re.compile(r"static box: AUC\s+([\d.]+)\s+P\s+([\d.]+)\s+Pnorm\s+([\d.]+)")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    env.pop("MLFLOW_RUN_ID", None)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def train(name: str, out: Path, args: argparse.Namespace, extra: list[str]) -> tuple[str, float, Path]:
    """One training job in a fresh process: (run id, wall seconds, its last checkpoint)."""
    folder = out / name
    cmd = [sys.executable, "-m", "seqtrack_mlflow", "train", "--config", args.config, "--epochs", str(args.epochs),
           "--samples-per-epoch", str(args.samples), "--output-dir", str(folder), "--run-name", f"bench-{name}",
           "--experiment-name", EXPERIMENT, "--no-system-metrics", *args.set_args, *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{name} job failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    (ckpt,) = folder.glob(f"*/checkpoints/epoch_{args.epochs}.ckpt")  # folder/<run id>/checkpoints
    return ckpt.parent.parent.name, wall, ckpt


def evaluate(ckpt: Path) -> dict[str, tuple[float, ...]]:
    cmd = [sys.executable, "-m", "seqtrack_mlflow", "evaluate", "--checkpoint", str(ckpt)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"evaluate {ckpt} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    model, static = _OVERALL.search(done.stdout), _STATIC.search(done.stdout)
    return {"model": tuple(map(float, model.groups())) if model else (),
            "static": tuple(map(float, static.groups())) if static else ()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="any source `train --init` takes")
    ap.add_argument("--config", default="default", help="preset or YAML of both jobs")
    ap.add_argument("--samples", type=int, default=1000, help="training samples per epoch of both jobs")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--set", dest="set_args", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for both jobs (repeatable), e.g. train.lr=1e-4")
    ap.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="skip closed-loop tracking")
    ap.add_argument("--out", default="", help="output folder ('' = a temporary one)")
    args = ap.parse_args()
    args.set_args = [a for item in args.set_args for a in ("--set", item)]

    sys.path.insert(0, str(SRC))
    import mlflow
    from mlflow.tracking import MlflowClient

    from seqtrack_mlflow import names

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    client = MlflowClient()
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="warm-start-bench-"))

    rows = []
    for name, extra in (("warm", ["--init", args.init]), ("scratch", [])):
        run_id, wall, ckpt = train(name, out, args, extra)
        m = client.get_run(run_id).data.metrics
        ious = [v for _, v in sorted((p.step, p.value) for p in client.get_metric_history(run_id, names.VAL_IOU))]
        scores = evaluate(ckpt) if args.evaluate else {}
        rows.append((name, run_id, wall, m.get(names.EPOCH_TRAIN_LOSS, float("nan")), ious,
                     m.get(names.NO_MOTION_IOU, float("nan")), scores))
        print(f"{name}: run {run_id}, {wall:.0f} s", flush=True)

    print(f"\n{args.config}, {args.epochs} epoch(s) x {args.samples} samples; warm = --init {args.init}")
    print(f"{'job':<8} {'wall s':>7} {'loss':>7}  {'val IoU per epoch':<28} {'AUC':>6} {'P':>6} {'Pnorm':>6}")
    for name, _, wall, loss, ious, _, scores in rows:
        auc = scores.get("model") or (float("nan"),) * 3
        print(f"{name:<8} {wall:7.0f} {loss:7.3f}  {' '.join(f'{v:.3f}' for v in ious):<28} "
              f"{auc[0]:6.1f} {auc[1]:6.1f} {auc[2]:6.1f}")
    static = next((r[6].get("static") for r in rows if r[6].get("static")), None)
    bar = rows[0][5]
    print(f"{'bars':<8} {'':>7} {'':>7}  {f'no-motion {bar:.3f}':<28} "
          + (f"{static[0]:6.1f} {static[1]:6.1f} {static[2]:6.1f}  (static first-frame box)" if static else ""))
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
