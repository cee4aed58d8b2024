"""fp32 vs bf16 training curves of the default preset, as a picture.

    python benchmarks/precision_curves.py [--samples-per-epoch 320] [--epochs 5]
                                          [--out benchmarks/results/precision_curves.png]

Trains configs/default.yaml twice through the real entry point (`python -m seqtrack_mlflow
train`), once per precision, with samples per epoch reduced (320 instead of 2000; the full
2000 also works). Measured on 2 CPU cores shared with other jobs: ~8 minutes per run, so ~16
minutes in all (an idle machine is about twice as fast). Runs go to a temporary MLflow store,
not ./mlflow.db.
Prints the per-epoch train loss and validation IoU of both runs with their relative gap, and
saves one PNG: per-block train loss, per-epoch train loss, per-epoch validation IoU.
Wall times are printed for information only: the runs are sequential, so for speed use
benchmarks/speed.py (side-by-side measurement).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


def train(precision: str, args: argparse.Namespace, env: dict[str, str], out: Path) -> float:
    cmd = [sys.executable, "-m", "seqtrack_mlflow", "train", "--precision", precision,
           "--epochs", str(args.epochs), "--samples-per-epoch", str(args.samples_per_epoch),
           "--output-dir", str(out), "--set", "train.device=cpu"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples-per-epoch", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision_curves.png"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="precision-curves-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONHASHSEED": "8",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs, seconds = {}, {}
    for precision in PRECISIONS:
        before = {r.info.run_id for r in client.search_runs(["0"])} if runs else set()
        seconds[precision] = train(precision, args, env, tmp / "outputs")
        (runs[precision],) = {r.info.run_id for r in client.search_runs(["0"])} - before
        print(f"{precision}: run {runs[precision]} finished in {seconds[precision]:.0f} s", flush=True)

    block = {p: history(client, r, "train/loss") for p, r in runs.items()}
    loss = {p: history(client, r, "epoch/train_loss") for p, r in runs.items()}
    iou = {p: history(client, r, "epoch/val_iou") for p, r in runs.items()}
    print(f"\ndefault preset, {args.epochs} epochs x {args.samples_per_epoch} samples, seed 8")
    print("| epoch | train loss fp32 | train loss bf16 | relative gap | val IoU fp32 | val IoU bf16 |")
    print("|---|---|---|---|---|---|")
    gaps = []
    for (e, a), (_, b), (_, ia), (_, ib) in zip(loss["fp32"], loss["bf16"], iou["fp32"], iou["bf16"]):
        gaps.append(abs(a - b) / a)
        print(f"| {e} | {a:.4f} | {b:.4f} | {gaps[-1]:.2%} | {ia:.4f} | {ib:.4f} |")
    blocks = [abs(a - b) / a for (_, a), (_, b) in zip(block["fp32"], block["bf16"])]
    print(f"largest relative gap: per epoch {max(gaps):.2%}, per 50-sample block {max(blocks):.2%}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = {"fp32": dict(color="tab:blue", lw=1.6), "bf16": dict(color="tab:orange", lw=1.2, ls="--")}
    for p in PRECISIONS:
        axes[0].plot(*zip(*block[p]), label=p, **styles[p])
        axes[1].plot(*zip(*loss[p]), marker="o", label=p, **styles[p])
        axes[2].plot(*zip(*iou[p]), marker="o", label=p, **styles[p])
    axes[0].set(title="train loss per progress block", xlabel="samples seen", ylabel="loss")
    axes[1].set(title=f"train loss per epoch (max gap {max(gaps):.2%})", xlabel="epoch", ylabel="loss")
    axes[2].set(title="validation IoU per epoch", xlabel="epoch", ylabel="IoU")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"SeqTrack default preset: fp32 vs bf16 autocast (CPU), {args.epochs} x "
                 f"{args.samples_per_epoch} samples, seed 8")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
