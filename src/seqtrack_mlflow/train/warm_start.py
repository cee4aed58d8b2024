"""Warm start (`train --init <source>`): a new run whose model starts from existing weights.

Only the weights are taken: optimizer, lr schedule, RNG streams and the epoch count start fresh
(epoch 1, step 0), exactly as in a run from scratch; the model's random init is simply
overwritten. So a fine-tune is a run of its own, unlike `--resume`, which continues a run
bit-exactly (and refuses --init: its checkpoint already holds the weights).

Sources, tried in this order:
1. an existing file: a checkpoint of this project (`epoch_N.ckpt`, verified against the
   `manifest.json` beside it when there is one), an official SeqTrack release
   (`SEQTRACK_ep0500.pth.tar`: weights under 'net'; position embeddings resampled to this
   config's crop sizes, as `model.load.load_official` does), a plain state dict, or a
   `.safetensors` file (the layout of the Hub mirror and of the LoggedModels); a folder holding
   `model.safetensors` (a `from_pretrained` folder) is read the same way;
2. MLflow: `<run_id>` (the run's last checkpoint), `<run_id>:<epoch>`, `runs:/<run_id>`,
   `runs:/<run_id>/checkpoints/epoch_N.ckpt`, or `models:/<name>@<alias>`,
   `models:/<name>/<version>`, `models:/<model_id>` (the checkpoint of the model's run and
   epoch); only the one checkpoint and its manifest are downloaded;
3. a Hugging Face repo mirrored by this project: `owner/name[@revision]`; its root
   `model.safetensors` (the best epoch), verified against the repo's manifest.json, from the
   commit the revision names when the run starts (recorded as a tag).

Everything (download, keys, shapes) is checked before the MLflow run exists, so a bad source
makes no run. Loading reads files and draws no random number: two runs with the same --init
are bit-identical, like two runs from scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from seqtrack_mlflow import names
from seqtrack_mlflow.config import Config, ModelConfig
from seqtrack_mlflow.errors import CheckpointError, ConfigError, SeqTrackError, first_line
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.names import checkpoint_epoch
from seqtrack_mlflow.torchfile import read_torch_file, state_dict_of
from seqtrack_mlflow.train.checkpoint import check_state, download_checkpoint, verify_checkpoint

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"(?P<run>[0-9a-f]{32})(?::(?P<epoch>\d+))?")
_RUNS_URI = re.compile(r"runs:/(?P<run>[0-9a-f]{32})(?:/(?P<path>.*))?")
# Hub repo ids: letters, digits, '-', '_', '.'; '@' then a branch, tag or commit.
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^\s@]+))?")
# A source with one of these endings names a file, never a Hub repo or a run.
_FILE_SUFFIXES = (".ckpt", ".pth", ".pt", ".tar", ".safetensors", ".bin")
# Model config keys that change what the weights compute but not their shapes: a source trained
# with another value still loads, with a warning. (Dropout rates are a training choice.)
_SAME_SHAPE_KEYS = ("num_heads", "decoder_heads")


@dataclasses.dataclass
class InitWeights:
    """Weights to start from, already checked against the config's model."""

    source: str                      # what the user gave (train.init)
    kind: str                        # file | run | model | hub
    state: dict[str, torch.Tensor]
    sha256: str                      # of the file the weights were read from
    official: bool = False           # official layout: position embeddings may be resampled
    run_id: str = ""                 # MLflow run of the source checkpoint (in this store)
    run_experiment: str | None = None
    epoch: int | None = None
    model_id: str = ""
    hub_repo: str = ""
    hub_commit: str = ""
    source_model: dict[str, Any] | None = None  # the source's model config, when it has one

    def describe(self) -> str:
        where = (f"run {self.run_id} epoch {self.epoch}" if self.run_id and self.epoch is not None
                 else f"{self.hub_repo}@{self.hub_commit[:12]}" if self.hub_repo else self.source)
        return f"{self.source} ({where})" if where != self.source else self.source

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the weights into `model` (its parameters stay the same objects, so an optimizer
        built on them keeps working); no random number is drawn."""
        model.load_state_dict(self.state, strict=True)
        log.info("warm start: %d tensors from %s; optimizer, schedule and epochs start fresh",
                 len(self.state), self.describe())

    def tags(self, experiment_id: str) -> dict[str, str]:
        """Tags of the new run (in `experiment_id`). MLflow nests a run under its
        `mlflow.parentRunId`, which must be in the same experiment: set only then."""
        tags = {names.INIT_SOURCE_TAG: self.source, names.INIT_KIND_TAG: self.kind,
                names.INIT_SHA256_TAG: self.sha256}
        if self.run_id:
            tags[names.INIT_RUN_TAG] = self.run_id
            if self.run_experiment is not None and self.run_experiment == experiment_id:
                tags[names.PARENT_RUN_TAG] = self.run_id
        if self.epoch is not None:
            tags[names.INIT_EPOCH_TAG] = str(self.epoch)
        if self.model_id:
            tags[names.INIT_MODEL_TAG] = self.model_id
        if self.hub_repo:
            tags[names.INIT_HUB_REPO_TAG] = self.hub_repo
            tags[names.INIT_HUB_COMMIT_TAG] = self.hub_commit
        return tags


def check_init_config(cfg: Config) -> None:
    """The settings --init cannot go with: ConfigError, before anything is read."""
    t = cfg.train
    if not t.init.strip():
        return
    if t.resume.strip():
        raise ConfigError(f"--init {t.init} and --resume {t.resume} together: a resume continues from its "
                          "own checkpoint, which already holds the weights its run started from; drop --init")
    if cfg.model.pretrained:
        raise ConfigError(f"--init {t.init} replaces every weight, so model.pretrained={cfg.model.pretrained!r} "
                          "would be overwritten; set model.pretrained to ''")


def load_init(cfg: Config) -> InitWeights:
    """The weights `cfg.train.init` names, checked against the model of `cfg` (keys, shapes).
    One-line ConfigError / CheckpointError / TrackingError / HubError when they cannot be used."""
    check_init_config(cfg)
    spec = cfg.train.init.strip()
    with _prefixed(spec), tempfile.TemporaryDirectory(prefix="seqtrack-init-") as tmp:
        init = _resolve(spec, Path(tmp))
        init.state = fit_to_model(init, cfg.model)
    _warn_on_other_model(init, cfg.model)
    return init


def inherited_tags(state: Mapping[str, Any]) -> dict[str, str]:
    """A resume of a warm-started run: the init its run started from, as a tag (the weights are
    already in the checkpoint; nothing is loaded again)."""
    config = state.get("config") if isinstance(state.get("config"), Mapping) else {}
    source = str(dict(config.get("train") or {}).get("init") or "")
    return {names.INIT_SOURCE_TAG: source} if source else {}


@contextlib.contextmanager
def _prefixed(spec: str) -> Iterator[None]:
    """Every error of a warm start as one line that starts with `--init <source>:`."""
    try:
        yield
    except SeqTrackError as exc:
        text = first_line(exc)
        if text.startswith("--init "):
            raise
        raise type(exc)(f"--init {spec}: {text}") from None


def _resolve(spec: str, tmp: Path) -> InitWeights:
    from seqtrack_mlflow import experiment

    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / names.WEIGHTS_FILE).is_file():
            return _from_file(spec, path / names.WEIGHTS_FILE)
        raise ConfigError(f"{path} is a folder without {names.WEIGHTS_FILE}; give a checkpoint or weights file")
    if path.is_file():
        return _from_file(spec, path)
    if experiment.is_model_uri(spec):
        run_id, epoch, model_id = experiment.resolve_model_uri(spec)
        return dataclasses.replace(_from_run(spec, run_id, epoch, tmp), kind="model", model_id=model_id)
    if match := _RUNS_URI.fullmatch(spec):
        rest = (match["path"] or "").strip("/")
        epoch = checkpoint_epoch(rest) if rest else None
        if rest and (epoch is None or Path(rest).parent.as_posix() != names.CHECKPOINTS):
            raise ConfigError(f"{rest!r} is not a checkpoint of the run; use runs:/<run_id> (its last "
                              f"checkpoint) or runs:/<run_id>/{names.CHECKPOINTS}/epoch_N.ckpt")
        return _from_run(spec, match["run"], epoch, tmp)
    if match := _RUN_ID.fullmatch(spec):
        return _from_run(spec, match["run"], int(match["epoch"]) if match["epoch"] else None, tmp)
    if path.suffix in _FILE_SUFFIXES or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ConfigError(f"no such file: {path}")
    if match := _HUB_ID.fullmatch(spec):
        return _from_hub(spec, match["repo"], match["rev"], tmp)
    raise ConfigError("not a file, an MLflow run id (<id>[:<epoch>], runs:/<id>), a models:/ URI or a "
                      "Hugging Face repo id (owner/name[@revision])")


def _from_file(spec: str, path: Path) -> InitWeights:
    """A weights file: safetensors by its suffix, anything else through the safe torch loader."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(exc)})") from None
        return InitWeights(spec, "file", state, sha256_file(path))
    verify_checkpoint(path)  # against manifest.json when one is beside it; a warning when not
    obj = read_torch_file(path)
    digest = sha256_file(path)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:  # this project's checkpoint
        check_state(obj, path)
        run_id = str(obj.get("run_id") or "")
        run_experiment = _experiment_of(run_id) if run_id else None
        config = obj.get("config") if isinstance(obj.get("config"), Mapping) else {}
        return InitWeights(spec, "file", state_dict_of(obj["model_state_dict"], str(path)), digest,
                           run_id=run_id if run_experiment is not None else "", run_experiment=run_experiment,
                           epoch=int(obj["epoch"]), source_model=dict(config.get("model") or {}) or None)
    official = isinstance(obj, Mapping) and isinstance(obj.get("net"), Mapping)
    return InitWeights(spec, "file", state_dict_of(obj, str(path)), digest, official=official)


def _experiment_of(run_id: str) -> str | None:
    from seqtrack_mlflow import experiment

    return experiment.experiment_of_run(run_id)


def _from_run(spec: str, run_id: str, epoch: int | None, tmp: Path) -> InitWeights:
    """Checkpoint `epoch` (None = the last) of a training run of this tracking store."""
    from seqtrack_mlflow import experiment

    run = experiment.training_run(run_id)
    epochs = experiment.checkpoint_epochs(run_id)
    if not epochs:
        raise CheckpointError(f"run {run_id} has no checkpoint yet (it stopped before its first epoch ended)")
    epoch = epochs[-1] if epoch is None else epoch
    if epoch not in epochs:
        raise ConfigError(f"run {run_id} has no checkpoint of epoch {epoch}; it has epochs "
                          f"{', '.join(map(str, epochs))}")
    path = download_checkpoint(run_id, epoch, tmp)
    init = _from_file(spec, path)
    return dataclasses.replace(init, kind="run", run_id=run_id, run_experiment=run.info.experiment_id,
                               epoch=epoch)


def _from_hub(spec: str, repo_id: str, revision: str | None, tmp: Path) -> InitWeights:
    """The root model.safetensors of a mirrored repo at the commit `revision` names now."""
    from seqtrack_mlflow import hub, hub_repo

    token = hub.get_token(None, required=False)  # public repos need none; never logged
    commit = hub.resolve_commit(repo_id, revision, token=token)
    path = hub_repo.fetch_file(repo_id, names.WEIGHTS_FILE, tmp, revision=commit, token=token)
    return dataclasses.replace(_from_file(spec, path), kind="hub", hub_repo=repo_id, hub_commit=commit)


def fit_to_model(init: InitWeights, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The source's tensors in the order of the config's model, after checking names and
    shapes; one line naming the first differing key (and both shapes) otherwise."""
    from seqtrack_mlflow.model.load import adapt_pos_embeds
    from seqtrack_mlflow.model.seqtrack import SeqTrack
    from seqtrack_mlflow.model.weights import compare

    with torch.random.fork_rng(devices=[]):  # a throw-away model: the global RNG stays untouched
        model = SeqTrack(dataclasses.replace(model_cfg, pretrained=""))
    state = adapt_pos_embeds(init.state, model) if init.official else dict(init.state)
    own = model.state_dict()
    diff = compare(own, state)
    if diff is not None and diff.missing:
        raise CheckpointError(f"the source has no {diff.missing[0]} ({len(diff.missing)} tensor(s) of this config's "
                              "model missing: another depth, decoder_layers or num_templates?)")
    if diff is not None and diff.unexpected:
        raise CheckpointError(f"the source has {diff.unexpected[0]}, which this config's model lacks "
                              f"({len(diff.unexpected)} unexpected tensor(s): another depth or decoder_layers?)")
    if diff is not None:
        key = diff.wrong_shape[0]
        raise CheckpointError(f"{key} has shape {tuple(state[key].shape)} in the source, "
                              f"{tuple(own[key].shape)} in this config's model")
    return {k: state[k] for k in own}


def _warn_on_other_model(init: InitWeights, model_cfg: ModelConfig) -> None:
    """Same shapes, other meaning (e.g. num_heads): loads, but say so."""
    if not init.source_model:
        return
    ours = dataclasses.asdict(model_cfg)
    differ = [f"model.{k}: {init.source_model[k]!r} in the source, {ours[k]!r} here" for k in _SAME_SHAPE_KEYS
              if k in init.source_model and init.source_model[k] != ours[k]]
    if differ:
        log.warning("--init %s: the weights fit but were trained with another model config (%s)",
                    init.source, "; ".join(differ))
