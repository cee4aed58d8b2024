"""Command line: `python -m seqtrack_mlflow <command> ...` (the MLproject entry points call it).

The only module that knows argparse and prints results (the one other print is the spec's
progress block, train/progress.py, also written to training_log.txt): each command parses its
own flags, builds the config (`load_config`: a flag left out, or given as "" by MLproject, keeps the
preset's value), calls plain library functions and prints what they return. A `SeqTrackError`
(bad parameter, bad file, missing token, ...) or an `OSError` (disk full, read-only folder) is
printed as one line on stderr with exit code 2; anything else is a bug and keeps its traceback.
Heavy modules (torch, mlflow) are imported inside the handlers, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from seqtrack_mlflow import names
from seqtrack_mlflow.config import Config, load_config
from seqtrack_mlflow.errors import SeqTrackError, describe_os_error

log = logging.getLogger("seqtrack_mlflow")


# Config flags: flag -> (dotted config key, help). Each command takes the groups it needs.
DATA_FLAGS = {
    "--classes": ("data.classes", "comma-separated LaSOT classes"),
    "--data": ("data.source", "sample (bundled, offline) | lasot (l-lt/LaSOT or a local copy)"),
    "--data-dir": ("data.root", "dataset folder ('' = the cache folder)"),
}
TRAIN_FLAGS = {
    "--seed": ("seed", "random seed of everything"),
    "--epochs": ("train.epochs", "training epochs"),
    "--batch-size": ("train.batch_size", "samples per optimizer step"),
    "--workers": ("train.workers", "data loader worker processes"),
    "--nproc": ("train.nproc", "data-parallel processes (torchrun, gloo on CPU / nccl on GPU)"),
    "--precision": ("train.precision", "auto (bf16 if native, else fp32) | fp32 | bf16 | fp16"),
    "--resume": ("train.resume", "checkpoint path or MLflow run id to continue from"),
    "--init": ("train.init", ("warm start from these weights only (fresh optimizer, epoch 1): a checkpoint or "
                              ".safetensors file, an MLflow run id[:epoch], runs:/ or models:/ URI, or a mirrored "
                              "Hub repo owner/name[@revision]")),
    "--patch-size": ("model.patch_size", "ViT patch size in pixels"),
    "--samples-per-epoch": ("data.samples_per_epoch", "training samples per epoch"),
}
DEVICE_FLAGS = {
    "--device": ("train.device", "auto | cpu | cuda | cuda:N"),
    "--output-dir": ("train.output_dir", "local folder for run outputs"),
}
PRESET_NOTE = "(default: the preset's value)"
RUN_NOTE = "(default: the evaluated model's training data)"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; flags that keep the preset's value say so instead of 'None'."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None and action.help and (PRESET_NOTE in action.help or RUN_NOTE in action.help):
            return action.help
        return super()._get_help_string(action)


def _add_config_flags(parser: argparse.ArgumentParser, *groups: dict[str, tuple[str, str]]) -> None:
    parser.add_argument("--config", default="default",
                        help="preset name (default, seqtrack_b256) or path of a YAML config")
    for group in groups:
        for flag, (key, text) in group.items():
            parser.add_argument(flag, dest=key, default=None, metavar="V", help=f"{text} {PRESET_NOTE}")
    parser.add_argument("--skip-bad-sequences", dest="data.skip_bad_sequences", action="store_const",
                        const="true", default=None,
                        help=f"skip (and count) malformed sequences instead of failing {PRESET_NOTE}")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set model.depth=6 (repeatable)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config flags and --set overrides as dotted keys (None or "" = not given)."""
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if "." in k or k == "seed"}
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SeqTrackError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.depth=6")
        overrides[key.strip()] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset <- flags <- --set overrides; "not given" is resolved in load_config."""
    return load_config(args.config, overrides_from_args(args))


def default_run_name(cfg: Config, config_arg: str) -> str:
    """Tells runs apart in `mlflow ui`: preset, seed, epochs, precision (and resume, warm start)."""
    preset = Path(str(config_arg or "default")).stem
    name = f"{preset}-seed{cfg.seed}-e{cfg.train.epochs}-{cfg.train.precision}"
    return name + ("-resumed" if cfg.train.resume else "") + ("-init" if cfg.train.init else "")


# -- handlers ------------------------------------------------------------------------------------
HASHSEED_SET = "SEQTRACK_HASHSEED_SET"  # set by the re-exec below, so it happens once


def ensure_hash_seed(seed: int) -> None:
    """PYTHONHASHSEED only takes effect at interpreter start: re-exec once if it differs. Called
    before torch is imported, so the re-exec costs an interpreter start, not a second torch import.
    """
    if os.environ.get("PYTHONHASHSEED") == str(seed) or os.environ.get(HASHSEED_SET):
        return
    os.environ["PYTHONHASHSEED"] = str(seed)
    os.environ[HASHSEED_SET] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "seqtrack_mlflow", *sys.argv[1:]])


def _train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    ensure_hash_seed(cfg.seed)  # may re-exec the interpreter once; nothing has started yet
    from seqtrack_mlflow.train.distributed import launch_if_needed

    launch_if_needed(cfg.train.nproc)  # nproc > 1: re-exec under torchrun
    from seqtrack_mlflow.train.signals import StopRequested
    from seqtrack_mlflow.training import run_training

    try:
        report = run_training(cfg, args.run_name or default_run_name(cfg, args.config), args.experiment_name)
    except StopRequested as exc:
        return 128 + exc.signum
    if report:
        print(report, flush=True)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from seqtrack_mlflow.data.dataset import open_dataset
    from seqtrack_mlflow.data.summary import dataset_summary, format_summary, write_summary

    cfg = config_from_args(args)
    summary = dataset_summary(open_dataset(cfg.data), cfg)
    print(format_summary(summary))
    if args.out:
        print(f"summary written to {write_summary(summary, args.out)}")
    return 0


def _debug_samples(args: argparse.Namespace) -> int:
    from seqtrack_mlflow.data.debug import save_sample_sheet

    cfg = config_from_args(args)
    count = save_sample_sheet(cfg, args.count, Path(args.out))
    print(f"{count} samples (epoch 0) written to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from seqtrack_mlflow.track.evaluate import evaluate

    overrides = overrides_from_args(args)
    # The data is the evaluated model's training data; only the data keys given here change it
    # (in evaluate). They are checked here already, before any work: the classes against LaSOT's
    # (the sample's are among them) unless --data names the source; the folder in evaluate.
    data = {k: v for k, v in overrides.items() if k.startswith("data.")}
    early = {k: v for k, v in data.items() if k != "data.root"}
    if not str(early.get("data.source") or "").strip():
        early["data.source"] = "lasot"
    cfg = load_config(args.config, {**{k: v for k, v in overrides.items() if k not in data}, **early})
    if args.epoch.strip().lower() == "all":
        if args.checkpoint.strip():
            raise SeqTrackError("--epoch all scores the checkpoints of a run: give --run-id, not --checkpoint")
        from seqtrack_mlflow.track.evaluate import evaluate_all

        reports = evaluate_all(cfg, run_id=args.run_id.strip(), experiment_name=args.experiment_name,
                               data_overrides=data, other_data=args.other_data)
        for report in reports:
            if report is reports[0]:
                print(f"data: {report['data']}")
            o = report["overall"]
            print(f"epoch {report['epoch']:>4}: AUC {100 * o['auc']:5.1f}  P {100 * o['precision']:5.1f}  "
                  f"Pnorm {100 * o['norm_precision']:5.1f}  {o['fps']:7.1f} fps  (MLflow run {report['mlflow_run_id']})")
        return 0
    report = evaluate(cfg, run_id=args.run_id.strip(), checkpoint=args.checkpoint.strip(), epoch=args.epoch,
                      experiment_name=args.experiment_name, data_overrides=data, other_data=args.other_data)
    o = report["overall"]
    print(f"data: {report['data']}")
    for name, s in report["sequences"].items():
        cached = "  (results read back)" if s["skipped"] else ""
        print(f"{name:>16}: AUC {100 * s['auc']:5.1f}  P {100 * s['precision']:5.1f}  "
              f"Pnorm {100 * s['norm_precision']:5.1f}  {s['fps']:7.1f} fps{cached}")
    print(f"{'overall':>16}: AUC {100 * o['auc']:5.1f}  P {100 * o['precision']:5.1f}  "
          f"Pnorm {100 * o['norm_precision']:5.1f}  {o['fps']:7.1f} fps  "
          f"({o['sequences']} sequences, {o['frames']} frames; MLflow run {report['mlflow_run_id']})")
    print(f"{'static box':>16}: AUC {100 * o['static_auc']:5.1f}  P {100 * o['static_precision']:5.1f}  "
          f"Pnorm {100 * o['static_norm_precision']:5.1f}  (the first-frame box on every frame)")
    return 0


def _download(args: argparse.Namespace) -> int:
    from seqtrack_mlflow import experiment

    with experiment.tool_run("download", "download") as _:
        run_id = args.run_id.strip() or experiment.latest_training_run(args.experiment_name)
        path = experiment.download_artifacts(run_id, args.artifact_path, args.dest)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        print(f)
    log.info("downloaded %d file(s) of run %s to %s", len(files), run_id, path)
    return 0


def _bool_arg(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean; use true or false")


def _mirror(args: argparse.Namespace) -> int:
    from seqtrack_mlflow import experiment
    from seqtrack_mlflow.publish.mirror import mirror_run

    with experiment.tool_run("mirror", "mirror") as _:
        result = mirror_run(run_id=args.run_id.strip(), repo_id=args.repo_id.strip(),
                            experiment_name=args.experiment_name.strip(), revision=args.revision.strip() or None,
                            private=args.private, dry_run=args.dry_run)
    if result.commit:
        print(f"{result.repo_url} {result.commit} {result.tag}" + ("" if result.changed else " (already up to date)"))
    return 0


def _fetch_hub(args: argparse.Namespace) -> int:
    from seqtrack_mlflow import hub_repo
    from seqtrack_mlflow.publish import mirror

    revision = args.revision.strip() or None
    if args.file:
        path = hub_repo.fetch_file(args.repo_id, args.file.strip(), args.dest, revision=revision)
    else:
        path = mirror.fetch_checkpoint(args.repo_id, args.epoch, args.dest, revision=revision)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # One declaration after another, command by command: long, but it reads as the CLI's help.
    parser = argparse.ArgumentParser(prog="python -m seqtrack_mlflow", formatter_class=_Formatter,
                                     description="Deterministic SeqTrack training tracked with MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    def command(name: str, text: str, handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.set_defaults(func=handler)
        return p

    def experiment_flag(p: argparse.ArgumentParser, text: str) -> None:
        p.add_argument("--experiment-name", default="",
                       help=f"{text} ('' = MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID, else Default)")

    p = command("train", "train SeqTrack (the MLflow 'main' entry point)", _train)
    _add_config_flags(p, TRAIN_FLAGS, DATA_FLAGS, DEVICE_FLAGS)
    p.add_argument("--run-name", default="", help="MLflow run name ('' = <preset>-seed<S>-e<E>-<precision>)")
    experiment_flag(p, "MLflow experiment of the run (created if missing)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--allow-data-change", dest="train.allow_data_change", action="store_const", const="true",
                   default=None, help="let --resume continue on data with another fingerprint (recorded on the run)")
    p.add_argument("--no-system-metrics", dest="mlflow.system_metrics", action="store_const", const="false",
                   default=None, help="do not log CPU/memory/GPU use as system/* metrics (mlflow.system_metrics)")

    p = command("summary", "print the dataset summary without training", _summary)
    _add_config_flags(p, DATA_FLAGS)
    p.add_argument("--out", default="", help="also write the summary JSON here ('' = do not)")

    p = command("debug-samples", "save a PNG of training samples with their boxes", _debug_samples)
    _add_config_flags(p, DATA_FLAGS)
    p.add_argument("--count", type=int, default=8, help="number of samples")
    p.add_argument("--out", default="samples.png", help="PNG path")

    p = command("evaluate", "track the test sequences and compute LaSOT metrics", _evaluate)
    _add_config_flags(p, DEVICE_FLAGS)
    for flag, (key, text) in DATA_FLAGS.items():
        p.add_argument(flag, dest=key, default=None, metavar="V", help=f"{text} {RUN_NOTE}")
    p.add_argument("--run-id", default="", help="training run to evaluate, or models:/<name>@<alias>, "
                   "models:/<name>/<version>, models:/<model_id> ('' = the latest run)")
    p.add_argument("--checkpoint", default="", help="checkpoint file (instead of a run), or a models:/ URI")
    p.add_argument("--epoch", default="best", help="epoch of the run: N, last, best or all")
    p.add_argument("--other-data", nargs="?", const="true", default="false", type=_bool_arg, metavar="BOOL",
                   help="allow another data source or class set than the model was trained on (a cross-data "
                   "evaluation: tagged, never recorded as the run's result)")
    experiment_flag(p, "experiment searched for the latest training run")

    p = command("download", "download a run's artifacts to a folder", _download)
    p.add_argument("--run-id", default="", help="MLflow run id ('' = the latest training run)")
    p.add_argument("--artifact-path", default="", help="e.g. checkpoints ('' = everything)")
    p.add_argument("--dest", default="downloads", help="destination folder")
    experiment_flag(p, "experiment searched for the latest training run")

    p = command("mirror", "publish a run to a Hugging Face model repo (safetensors, card, tag)", _mirror)
    p.add_argument("--run-id", default="", help="training run, or a models:/ URI (its run) ('' = the latest one)")
    experiment_flag(p, "experiment searched for the latest training run")
    p.add_argument("--repo-id", default=names.DEFAULT_HUB_REPO, help="Hub model repo")
    p.add_argument("--revision", default="", help="branch to commit to ('' = main)")
    # Flags or explicit values: MLproject passes `--private false` / `--dry-run true`.
    p.add_argument("--private", nargs="?", const="true", default="false", type=_bool_arg,
                   metavar="BOOL", help="create the repo as private")
    p.add_argument("--dry-run", nargs="?", const="true", default="false", type=_bool_arg,
                   metavar="BOOL", help="verify and list, upload nothing")

    p = command("fetch-hub", "download a file from a mirrored repo, verified against its manifest", _fetch_hub)
    p.add_argument("--repo-id", default=names.DEFAULT_HUB_REPO, help="Hub model repo")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--epoch", type=int, help="epoch N: resume/epoch_N.ckpt (full training state)")
    what.add_argument("--file", default="", help="any file listed in the repo's manifest.json")
    p.add_argument("--revision", default="", help="branch, tag (run-<id8>) or commit ('' = main)")
    p.add_argument("--dest", default=".", help="folder to place the file in")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except SeqTrackError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only or missing folder: the environment, not a bug
        if args.verbose:
            raise
        print(f"error: {describe_os_error(exc)} (add -v for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
