"""Command line: `python -m seqtrack_mlflow <command> ...` (the MLproject entry points call it).

Each command parses its flags here and hands them to the module that does the work. A
`SeqTrackError` (bad parameter, bad file, missing token, ...) or an `OSError` (disk full,
read-only folder) is printed as one line on stderr with exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Callable

from seqtrack_mlflow.config import Config, load_config
from seqtrack_mlflow.errors import NotImplementedYet, SeqTrackError, describe_os_error

log = logging.getLogger("seqtrack_mlflow")

# Flags shared by every command that builds a config: flag -> dotted config key.
# A flag left out keeps the preset's value.
CONFIG_FLAGS = {
    "--seed": ("seed", "random seed of everything (spec: 8)"),
    "--epochs": ("train.epochs", "training epochs"),
    "--batch-size": ("train.batch_size", "samples per optimizer step"),
    "--workers": ("train.workers", "data loader worker processes"),
    "--nproc": ("train.nproc", "data-parallel processes (torchrun, gloo on CPU / nccl on GPU)"),
    "--device": ("train.device", "auto | cpu | cuda | cuda:N"),
    "--precision": ("train.precision", "fp32 | bf16 | fp16"),
    "--output-dir": ("train.output_dir", "local folder for run outputs"),
    "--resume": ("train.resume", "checkpoint path or MLflow run id to continue from"),
    "--patch-size": ("model.patch_size", "ViT patch size in pixels"),
    "--classes": ("data.classes", "comma-separated LaSOT classes"),
    "--data": ("data.source", "sample (bundled, offline) | lasot (download l-lt/LaSOT)"),
    "--data-dir": ("data.root", "dataset folder ('' = cache folder)"),
    "--samples-per-epoch": ("data.samples_per_epoch", "training samples per epoch"),
}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="YAML preset (default: configs/default.yaml)")
    for flag, (key, text) in CONFIG_FLAGS.items():
        parser.add_argument(flag, dest=key, default=None, metavar="V", help=text)
    parser.add_argument("--skip-bad-sequences", dest="data.skip_bad_sequences",
                        action="store_const", const="true", default=None,
                        help="skip (and count) malformed sequences instead of failing")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set model.depth=6 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset <- flags <- --set overrides. Empty strings and 0 for the sizes mean 'keep preset'
    for the values that MLproject always passes (so its defaults do not mask the preset)."""
    overrides: dict[str, Any] = {}
    for key, _ in CONFIG_FLAGS.values():
        value = getattr(args, key, None)
        if value is None:
            continue
        if key == "data.samples_per_epoch" and str(value).strip() in ("", "0"):
            continue  # MLproject default: the preset's own epoch length
        if key in ("train.resume", "data.root") and str(value).strip() == "":
            continue
        overrides[key] = value
    if getattr(args, "data.skip_bad_sequences", None):
        overrides["data.skip_bad_sequences"] = "true"
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SeqTrackError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.depth=6")
        overrides[key.strip()] = value
    return load_config(args.config, overrides)


def _import(module_name: str, command: str) -> Any:
    """Import lazily so `--help` does not load torch or mlflow."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("seqtrack_mlflow"):
            raise NotImplementedYet(
                f"'{command}' is not implemented yet ({module_name} is missing)") from None
        raise


def _handler(target: str) -> Callable[[argparse.Namespace], int]:
    """'module:function' called with the parsed arguments."""
    module_name, func_name = target.split(":")
    return lambda args: getattr(_import(module_name, args.command), func_name)(args)


def _train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from seqtrack_mlflow.train.determinism import ensure_hash_seed
    ensure_hash_seed(cfg.seed)  # may re-exec the interpreter once; nothing has started yet
    from seqtrack_mlflow.train.distributed import launch_if_needed
    launch_if_needed(cfg.train.nproc)  # nproc > 1: re-exec under torchrun
    return _import("seqtrack_mlflow.train.trainer", "train").run_training(cfg)


def _bool_arg(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean; use true or false")


def _mirror(args: argparse.Namespace) -> int:
    from seqtrack_mlflow.mirror import mirror_run

    result = mirror_run(run_id=args.run_id.strip(), repo_id=args.repo_id.strip(),
                        experiment=args.experiment.strip(), revision=args.revision.strip() or None,
                        private=args.private, dry_run=args.dry_run)
    if result.commit:
        print(f"{result.repo_url} {result.commit} {result.tag}"
              + ("" if result.changed else " (already up to date)"))
    return 0


def _fetch_hub(args: argparse.Namespace) -> int:
    from seqtrack_mlflow import mirror

    revision = args.revision.strip() or None
    if args.file:
        path = mirror.fetch_file(args.repo_id, args.file.strip(), args.dest, revision=revision)
    else:
        path = mirror.fetch_checkpoint(args.repo_id, args.epoch, args.dest, revision=revision)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m seqtrack_mlflow",
        description="Deterministic SeqTrack training tracked with MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("train", help="train SeqTrack (the MLflow 'main' entry point)")
    add_config_args(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit")
    p.set_defaults(func=_train)

    p = sub.add_parser("summary", help="print the dataset summary without training")
    add_config_args(p)
    p.add_argument("--out", default="", help="also write the summary JSON here")
    p.set_defaults(func=_handler("seqtrack_mlflow.data.summary:cli_summary"))

    p = sub.add_parser("debug-samples", help="save a PNG of training samples with their boxes")
    add_config_args(p)
    p.add_argument("--count", type=int, default=8, help="number of samples")
    p.add_argument("--out", default="samples.png", help="PNG path")
    p.set_defaults(func=_handler("seqtrack_mlflow.data.debug:cli_debug_samples"))

    p = sub.add_parser("mirror", help="publish a run to a Hugging Face model repo (safetensors, card, tag)")
    p.add_argument("--run-id", default="", help="MLflow run (default: latest FINISHED run)")
    p.add_argument("--experiment", default="", help="experiment name for the default run")
    p.add_argument("--repo-id", default="hossamaladdin/Assignment3", help="Hub model repo")
    p.add_argument("--revision", default="", help="branch to commit to ('' = main)")
    # Flags or explicit values: MLproject passes `--private false` / `--dry-run true`.
    p.add_argument("--private", nargs="?", const="true", default="false", type=_bool_arg,
                   metavar="BOOL", help="create the repo as private")
    p.add_argument("--dry-run", nargs="?", const="true", default="false", type=_bool_arg,
                   metavar="BOOL", help="verify and list, upload nothing")
    p.set_defaults(func=_mirror)

    p = sub.add_parser("fetch-hub", help="download a file from a mirrored repo, verified against its manifest")
    p.add_argument("--repo-id", default="hossamaladdin/Assignment3", help="Hub model repo")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--epoch", type=int, help="epoch N: resume/epoch_N.ckpt (full training state)")
    what.add_argument("--file", default="", help="any file listed in the repo's manifest.json")
    p.add_argument("--revision", default="", help="branch, tag (run-<id8>) or commit ('' = main)")
    p.add_argument("--dest", default=".", help="folder to place the file in")
    p.set_defaults(func=_fetch_hub)

    p = sub.add_parser("evaluate", help="track the test sequences and compute LaSOT metrics")
    add_config_args(p)
    p.add_argument("--run-id", default="", help="training run to evaluate")
    p.add_argument("--checkpoint", default="", help="checkpoint path (instead of a run)")
    p.add_argument("--epoch", default="best", help="epoch of the run: N, 'last' or 'best'")
    p.set_defaults(func=_handler("seqtrack_mlflow.track.evaluate:cli_evaluate"))

    p = sub.add_parser("download", help="download a run's artifacts to a folder")
    p.add_argument("--run-id", required=True, help="MLflow run id")
    p.add_argument("--artifact-path", default="", help="e.g. checkpoints ('' = everything)")
    p.add_argument("--dest", default="downloads", help="destination folder")
    p.set_defaults(func=_handler("seqtrack_mlflow.tracking:cli_download"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except SeqTrackError as exc:
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
