"""Every MLflow tracking call of the project goes through this package; model, data, trainer and
tracker code never import mlflow. (Named `experiment`, not `tracking`: in a tracking project
that word is taken.) Model packaging (LoggedModels, the registry) is in `publish.models`.

- `store`: the client, one-line store errors, the sqlite creation lock, the active experiment
  (--experiment-name, MLFLOW_EXPERIMENT_NAME, MLFLOW_EXPERIMENT_ID, else Default);
- `runs`: runs being written (`TrainingRun`, `NullRun`, `EvaluationRun`, `tool_run`);
- `lookup`: runs, models and artifacts read back.
"""

from seqtrack_mlflow.experiment.lookup import (
    MODELS_SCHEME,
    checkpoint_epochs,
    close_resumed_run,
    download_artifacts,
    epoch_models,
    experiment_of_run,
    find_run,
    is_model_uri,
    latest_evaluation,
    latest_training_run,
    metric_points,
    remove_upload_leftovers,
    resolve_model_uri,
    set_run_tags,
    training_run,
)
from seqtrack_mlflow.experiment.runs import (
    EvaluationRun,
    NullRun,
    TrainingRun,
    log_dataset,
    log_to_training_run,
    tool_run,
)
from seqtrack_mlflow.experiment.store import (
    client,
    experiment_id,
    prepare_store,
    retry_locked,
    set_http_defaults,
    tracking_errors,
    tracking_uri,
)

__all__ = [
    "MODELS_SCHEME", "EvaluationRun", "NullRun", "TrainingRun", "checkpoint_epochs", "client",
    "close_resumed_run", "download_artifacts", "epoch_models", "experiment_id", "experiment_of_run",
    "find_run", "is_model_uri", "latest_evaluation", "latest_training_run", "log_dataset",
    "log_to_training_run", "metric_points", "prepare_store", "remove_upload_leftovers",
    "resolve_model_uri", "retry_locked", "set_http_defaults", "set_run_tags", "tool_run", "tracking_errors", "tracking_uri", "training_run",
]
