"""Reading runs back from the tracking store: a run by id, training runs (only runs tagged as
training runs are candidates), the newest one, its checkpoint epochs, metric histories,
evaluations, `models:/` URIs, artifact downloads."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from seqtrack_mlflow import names
from seqtrack_mlflow.errors import TrackingError
from seqtrack_mlflow.experiment.store import (
    access_denied,
    client,
    experiment_id,
    prepare_store,
    tracking_errors,
    tracking_uri,
)


def find_run(run_id: str):
    """The MLflow run with this id, or TrackingError with a clear message."""
    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        denied = access_denied(exc, f"reading run {run_id}")
        if denied is not None:
            raise denied from None
        raise TrackingError(f"no MLflow run with id {run_id!r} in tracking store "
                            f"{tracking_uri()}") from None


MODELS_SCHEME = "models:/"


def is_model_uri(text: str) -> bool:
    return str(text).strip().startswith(MODELS_SCHEME)


def resolve_model_uri(uri: str) -> tuple[str, int, str]:
    """`models:/<name>@<alias>`, `models:/<name>/<version>` or `models:/<model_id>` -> (training
    run id, epoch, model id) of a LoggedModel this project logged. One TrackingError line when
    the name, alias, version or model does not exist."""
    rest = uri.strip()[len(MODELS_SCHEME):].strip("/")
    with tracking_errors(f"resolving {uri}"):
        try:
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client().get_model_version_by_alias(name, alias)
            elif "/" in rest:
                name, number = rest.split("/", 1)
                version = client().get_model_version(name, number)
            else:
                version = None
                model = client().get_logged_model(rest)
        except MlflowException as exc:
            if access_denied(exc, "") is not None:
                raise  # tracking_errors says it
            what = ("registered model, alias or version" if "@" in rest or "/" in rest else "logged model")
            raise TrackingError(f"{uri}: no such {what} in {tracking_uri()} "
                                f"({exc.error_code})") from None
        if version is not None:
            model_id = getattr(version, "model_id", None) or str(version.source or "").removeprefix(MODELS_SCHEME)
            try:
                model = client().get_logged_model(model_id)
            except MlflowException:
                raise TrackingError(f"{uri}: version {version.version} does not come from a logged model "
                                    f"(source {version.source})") from None
    epoch = model.tags.get(names.EPOCH_TAG, "")
    if not model.source_run_id or not epoch.isdigit():
        raise TrackingError(f"{uri}: model {model.model_id} was not logged by seqtrack training "
                            f"(no source run or {names.EPOCH_TAG} tag)")
    return model.source_run_id, int(epoch), model.model_id


def epoch_models(run_id: str) -> dict[int, str]:
    """{epoch: LoggedModel id} of a training run (its models tagged with an epoch)."""
    with tracking_errors(f"searching the models of run {run_id}"):
        models = mlflow.search_logged_models(experiment_ids=[find_run(run_id).info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'", output_format="list")
    return {int(m.tags[names.EPOCH_TAG]): m.model_id for m in models
            if str(m.tags.get(names.EPOCH_TAG, "")).isdigit()}


def training_run(run_id: str, experiment: str = ""):
    """A training run by id: TrackingError if it is missing, of another kind, or (when an
    experiment is named) in another experiment."""
    run = find_run(run_id)
    kind = run.data.tags.get(names.KIND_TAG, "")
    if kind != "train":
        raise TrackingError(f"run {run_id} is not a training run (its {names.KIND_TAG} tag is {kind!r}); "
                            "pass the id of a training run")
    if experiment:
        wanted = experiment_id(experiment)
        if run.info.experiment_id != wanted:
            raise TrackingError(f"run {run_id} belongs to experiment id {run.info.experiment_id}, "
                                f"not to {experiment!r}")
    return run


def latest_training_run(experiment: str = "") -> str:
    """The id of the newest FINISHED training run that has checkpoints, in the active experiment
    (the default of mirror, evaluate, fetch-hub and download)."""
    exp_id = experiment_id(experiment)
    with tracking_errors("searching runs"):
        runs = client().search_runs(
            [exp_id], filter_string=f"attributes.status = 'FINISHED' and tags.`{names.KIND_TAG}` = 'train'",
            order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        if checkpoint_epochs(run.info.run_id):
            return run.info.run_id
    exp = client().get_experiment(exp_id)
    raise TrackingError(f"experiment {exp.name!r} has no FINISHED training run with checkpoints; "
                        "pass a run id")


def checkpoint_epochs(run_id: str) -> list[int]:
    """Epochs N of the run's `checkpoints/epoch_N.ckpt` artifacts, ascending."""
    find_run(run_id)
    with tracking_errors(f"listing the checkpoints of run {run_id}"):
        return names.checkpoint_epochs([a.path for a in client().list_artifacts(run_id, names.CHECKPOINTS)])


def metric_points(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged point of a metric, by step (empty if never logged)."""
    with tracking_errors(f"reading metric {key} of run {run_id}"):
        return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def _same_data(trained: dict[str, str], evaluated: dict[str, str]) -> bool:
    """False when an evaluation's data.source or data.classes param differs from the training
    run's (a key either run lacks is not compared; classes compare as sets)."""
    for key in ("data.source", "data.classes"):
        a, b = trained.get(key), evaluated.get(key)
        if a is None or b is None:
            continue
        if key == "data.classes":
            a, b = ({c.strip() for c in str(v).split(",") if c.strip()} for v in (a, b))
        if a != b:
            return False
    return True


def latest_evaluation(run_id: str) -> dict[str, Any] | None:
    """The newest FINISHED evaluation of a training run on the data it was trained on (an
    `EvaluationRun` whose parent it is, searched in the training run's experiment), or None:
    {run_id, epoch, data_source, classes, sequences, metrics: {auc, precision, norm_precision}
    as fractions}. Evaluations on other data (CROSS_DATA_TAG, or a data.source / data.classes
    param other than the training run's) are not the run's result and are skipped."""
    train = find_run(run_id)
    with tracking_errors(f"searching the evaluations of run {run_id}"):
        runs = client().search_runs(
            [train.info.experiment_id], max_results=200, order_by=["attributes.start_time DESC"],
            filter_string=(f"tags.mlflow.parentRunId = '{run_id}' and tags.`{names.KIND_TAG}` = 'evaluate' "
                           "and attributes.status = 'FINISHED'"))
    for run in runs:
        if run.data.tags.get(names.CROSS_DATA_TAG) == "true" or not _same_data(train.data.params, run.data.params):
            continue
        metrics = {k: float(run.data.metrics[f"{names.EVAL_PREFIX}{k}"])
                   for k in ("auc", "precision", "norm_precision") if f"{names.EVAL_PREFIX}{k}" in run.data.metrics}
        if not metrics:
            continue
        epoch = run.data.tags.get(names.EPOCH_TAG) or run.data.params.get("eval.epoch")
        sequences = run.data.params.get("eval.sequences", "")
        return {"run_id": run.info.run_id, "epoch": int(epoch) if str(epoch or "").isdigit() else None,
                "data_source": run.data.params.get("data.source", ""),
                "classes": run.data.params.get("data.classes", ""),
                "sequences": len([s for s in sequences.split(",") if s]) or None, "metrics": metrics}
    return None


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    with tracking_errors(f"tagging run {run_id}"):
        client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def download_artifacts(run_id: str, artifact_path: str, dest: str | Path) -> Path:
    """Download `artifact_path` ('' = everything) of a run into dest; clear errors."""
    find_run(run_id)
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path or None,
                                                    dst_path=str(dest))
    except (MlflowException, OSError) as exc:
        listing = ", ".join(a.path for a in client().list_artifacts(run_id)) or "nothing"
        raise TrackingError(f"run {run_id} has no artifact {artifact_path!r} (it has: {listing})"
                            f" [{type(exc).__name__}]") from None
    return Path(local)


def experiment_of_run(run_id: str) -> str | None:
    """The experiment id of a run in this tracking store, None if the store has no such run
    (a checkpoint file made elsewhere names a run of another store)."""
    prepare_store()
    try:
        return find_run(run_id).info.experiment_id
    except TrackingError:
        return None


# What MLflow's local artifact store names a file while it copies it in (LocalArtifactRepository):
# a kill during the copy leaves it behind, beside the complete artifacts.
_UPLOAD_PREFIX = ".artifact.uploading."


def remove_upload_leftovers(run_id: str) -> list[Path]:
    """Half-copied artifact files of a run on a local artifact store (left by a kill); removed."""
    parsed = urllib.parse.urlparse(find_run(run_id).info.artifact_uri)
    if parsed.scheme not in ("", "file"):
        return []
    root = Path(urllib.parse.unquote(parsed.path))
    removed = []
    for path in root.rglob(f"{_UPLOAD_PREFIX}*") if root.is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def close_resumed_run(run_id: str, resumed_by: str) -> None:
    """A run that a resume takes over: tag it, and mark it KILLED if it was left RUNNING."""
    with tracking_errors(f"closing run {run_id}"):
        client().set_tag(run_id, names.RESUMED_BY_TAG, resumed_by)
        if client().get_run(run_id).info.status == "RUNNING":
            client().set_terminated(run_id, status="KILLED")
