"""Names shared between writers and readers: metric keys, tags, artifact paths, file names.

A run written by the trainer is read back by resume, evaluate, mirror and the benchmarks; a
mirrored Hub repo is read back by warm start and fetch-hub. Each name below is written once
here so they cannot drift apart.
"""

import re
from pathlib import Path

# -- metrics (step = global training samples seen) ---------------------------------------------
TRAIN_LOSS = "train/loss"
TRAIN_IOU = "train/iou"  # teacher-forced argmax boxes against the targets
BLOCK_METRICS = (TRAIN_LOSS, TRAIN_IOU, "time/block_seconds", "time/elapsed_seconds",
                 "time/eta_epoch_seconds", "time/samples_per_second")

# -- metrics (step = epoch) --------------------------------------------------------------------
# The trainer keeps one row per epoch (its history, in every checkpoint too) with these keys and
# logs each as EPOCH_PREFIX + key. Held-out tracking adds val_auc, val_precision, val_norm_precision.
ROW_TRAIN_LOSS = "train_loss"
ROW_VAL_IOU = "val_iou"
ROW_BEST_VAL_IOU = "best_val_iou"
ROW_VAL_AUC = "val_auc"  # closed-loop tracking of the held-out sequences (data.val_tracking)
ROW_SECONDS = "seconds"
ROW_LR = "lr"  # the rate the epoch trained with
ROW_SKIPPED = "skipped_samples"
EPOCH_PREFIX = "epoch/"


def epoch_metric(key: str) -> str:
    """The MLflow metric of an epoch-row key: 'val_iou' -> 'epoch/val_iou'."""
    return EPOCH_PREFIX + key


EPOCH_TRAIN_LOSS = epoch_metric(ROW_TRAIN_LOSS)
VAL_IOU = epoch_metric(ROW_VAL_IOU)
VAL_AUC = epoch_metric(ROW_VAL_AUC)
# Run-level bests (step = epoch; the last value is the run's): search_runs and the compare view
# rank runs by them. BEST_EPOCH is the epoch the ranking rule picks (epoch_ranking.py).
BEST_VAL_AUC = epoch_metric("best_val_auc")
BEST_VAL_IOU = epoch_metric(ROW_BEST_VAL_IOU)
BEST_EPOCH = epoch_metric("best_epoch")
NO_MOTION_IOU = "val/no_motion_iou"  # step 0: the bar VAL_IOU has to clear

# -- where the job's time goes (train/phases.py, docs/performance.md) ---------------------------
PHASE_PREFIX = "time/phase/"  # + a phase name: its seconds in the epoch (step = epoch)
EPOCH_SAMPLES_PER_SECOND = "time/epoch_samples_per_second"  # the epoch's samples / seconds inside its training blocks
STARTUP_SECONDS = "time/startup_seconds"  # step 0: process start to the first epoch
# At the end (step = global samples): the whole job.
JOB_SECONDS = "time/job_seconds"  # process start to the end of training and registration (the report follows)
TRAINING_SECONDS = "time/training_seconds"  # inside training blocks: data wait, forward/backward, optimizer
TRAIN_SAMPLES_PER_SECOND = "time/train_samples_per_second"  # samples trained / TRAINING_SECONDS
OUTSIDE_TRAINING_FRACTION = "time/outside_training_fraction"  # 1 - TRAINING_SECONDS / JOB_SECONDS
REGISTRATION_SECONDS = "time/registration_seconds"  # the best epoch registered in the model registry

# -- metrics of an evaluation (step = evaluated epoch) -----------------------------------------
EVAL_PREFIX = "eval/"
EVAL_METRICS = ("auc", "precision", "norm_precision", "mean_iou", "fps",
                "static_auc", "static_precision", "static_norm_precision")  # static: the first-frame box

# -- tags ----------------------------------------------------------------------------------------
KIND_TAG = "seqtrack.kind"  # what a run is: one of KINDS; only "train" runs hold checkpoints
KINDS = ("train", "evaluate", "mirror", "download")
ERROR_TAG = "seqtrack.error"
EPOCH_TAG = "seqtrack.epoch"  # on evaluation runs, LoggedModels and registered versions
TAG_PREFIX = "seqtrack."  # + version and CPU facts (seqtrack.torch_version, seqtrack.cpu_model, ...)
DEVICE_TAG = "seqtrack.device"
OUTPUT_DIR_TAG = "seqtrack.output_dir"
DATA_SOURCE_TAG = "seqtrack.data_source"  # where the run's frames came from, in words
DATA_REVISION_TAG = "seqtrack.data_revision"  # l-lt/LaSOT commit, or 'local'
DATA_ROOT_TAG = "seqtrack.data_root"  # the absolute folder a run read its data from
DATA_ORIGIN_TAG = "seqtrack.data_origin"
DATA_FINGERPRINT_TAG = "seqtrack.data_fingerprint"  # digest of the whole frame index
# On evaluation runs: what was evaluated.
EVALUATED_RUN_TAG = "seqtrack.evaluated_run"
CHECKPOINT_SHA256_TAG = "seqtrack.checkpoint_sha256"
MODEL_ID_TAG = "seqtrack.model_id"
# On evaluation runs: the data the model was trained on and the data it was scored on, each as
# "<source>:<class>,<class>"; CROSS_DATA_TAG "true" when they differ (`evaluate --other-data`):
# such a result is never logged as the training run's eval/* nor put into its model card.
TRAINED_ON_TAG = "seqtrack.trained_on"
EVALUATED_ON_TAG = "seqtrack.evaluated_on"
CROSS_DATA_TAG = "seqtrack.cross_data"
RESUMED_FROM_TAG = "seqtrack.resumed_from"  # a resumed run: the run (or file) and epoch it continues
RESUMED_FROM_EPOCH_TAG = "seqtrack.resumed_from_epoch"
RESUMED_BY_TAG = "seqtrack.resumed_by"  # on the run a resume took over
RESUME_DATA_CHANGED_TAG = "seqtrack.resume_data_changed"  # '<checkpoint fingerprint> -> <data fingerprint>'
DATA_FINGERPRINT_KEY = "data_fingerprint"  # checkpoint key: data.index.fingerprint of the data trained on
MODEL_RUN_TAG = "seqtrack.run_id"  # on registered model versions: the training run
# On registered model versions: the ranking score of the version (metric name and value), the
# digest of the held-out rows it was validated on, and the champion decision in words.
SCORE_METRIC_TAG = "seqtrack.ranking_metric"
SCORE_VALUE_TAG = "seqtrack.ranking_value"
VALIDATION_DIGEST_TAG = "seqtrack.validation_digest"
CHAMPION_DECISION_TAG = "seqtrack.champion_decision"
LATEST_ALIAS = "newest"  # the registry alias every newly registered version takes ("latest" is reserved by MLflow)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3 UI: which pages an experiment opens with
EXPERIMENT_KIND = "custom_model_development"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own; set by the trainer only when MLflow did not
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
# A warm start (--init): where its weights came from. INIT_SOURCE_TAG is also set on a resume
# of such a run (inherited from the checkpoint's config; nothing is loaded again).
INIT_SOURCE_TAG = "seqtrack.init_source"
INIT_KIND_TAG = "seqtrack.init_kind"  # file | run | model | hub
INIT_SHA256_TAG = "seqtrack.init_sha256"  # of the file the weights were read from
INIT_RUN_TAG = "seqtrack.init_source_run"  # MLflow run of the source checkpoint
INIT_EPOCH_TAG = "seqtrack.init_source_epoch"
INIT_MODEL_TAG = "seqtrack.init_model_id"  # LoggedModel of a models:/ source
INIT_HUB_REPO_TAG = "seqtrack.init_hub_repo"
INIT_HUB_COMMIT_TAG = "seqtrack.init_hub_commit"  # the revision resolved to a commit

# -- artifacts (paths inside a training run) ---------------------------------------------------
CHECKPOINTS = "checkpoints"
TRAINING_LOG = "training_log.txt"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "dataset_summary.json"
REPORT_FILE = "report.md"
PLOTS = "plots"
EVALUATION = "evaluation"
RUN_FILES = (TRAINING_LOG, REPORT_FILE, CONFIG_FILE, SUMMARY_FILE)  # a run's own files, mirrored as they are

# -- checkpoint files: checkpoints/epoch_N.ckpt beside checkpoints/manifest.json ---------------
MANIFEST = "manifest.json"  # sha256 of every file beside it (a checkpoint folder, a Hub repo)
_CHECKPOINT_RE = re.compile(r"epoch_([1-9]\d*)\.ckpt")


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch}.ckpt"


def checkpoint_epoch(name: str) -> int | None:
    """N of 'epoch_N.ckpt' (a bare name or a path), None for any other file name."""
    match = _CHECKPOINT_RE.fullmatch(Path(name).name)
    return int(match.group(1)) if match else None


def checkpoint_epochs(paths: list[str]) -> list[int]:
    """The epochs of the checkpoint files among these names, ascending."""
    return sorted(e for e in map(checkpoint_epoch, paths) if e is not None)


# -- exported weights (a LoggedModel's weights/, a Hub repo's root and checkpoints/epoch_N/) ----
WEIGHTS_CONFIG = "config.json"  # ModelConfig fields at the top level, as PyTorchModelHubMixin writes them
WEIGHTS_FILE = "model.safetensors"

# -- the Hugging Face Hub ------------------------------------------------------------------------
DEFAULT_HUB_REPO = "hossamaladdin/Assignment3"  # the assignment's repo; configs/default.yaml holds it too
# Hub tags of the model (the mixin adds model_hub_mixin and pytorch_model_hub_mixin; the card
# carries them all).
HUB_TAGS = ("visual-object-tracking", "single-object-tracking", "seqtrack", "mlflow", "pytorch")

# -- MLflow dataset inputs -------------------------------------------------------------------------
# Which rows each context reads: training samples come from the train sequences; validation
# (each epoch) and evaluation (tracking) from the held-out test sequences.
CONTEXT_SPLITS = {"training": "train", "validation": "test", "evaluation": "test"}
HF_DATASETS_SCHEME = "hf://datasets/"  # a dataset source on the Hub: hf://datasets/<repo>@<commit>
