"""`hub.push_every_epoch`: upload each epoch to the Hub in a background thread while training goes
on, in the layout that `mirror` publishes (hub_repo.py)."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from seqtrack_mlflow import epoch_ranking, hub
from seqtrack_mlflow.errors import SeqTrackError
from seqtrack_mlflow.fsutil import sha256_file
from seqtrack_mlflow.hub_repo import MANIFEST_FORMAT, resume_path, weights_dir
from seqtrack_mlflow.names import MANIFEST, WEIGHTS_CONFIG, WEIGHTS_FILE
from seqtrack_mlflow.publish.export import export_pretrained
from seqtrack_mlflow.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class EpochUploader:
    """Uploads each epoch to the Hub in a background thread while training goes on.

    The trainer's hook, called after each checkpoint is written (rank 0 only):

        uploader = EpochUploader(repo_id, run_id, revision=..., private=...)   # once, at start
        uploader.on_checkpoint(epoch, checkpoint_path, score)                  # after each save
        uploader.close(timeout=60)                                             # at the end

    `on_checkpoint` only puts the epoch in a queue and returns at once (no hashing, no network):
    the training loop never waits. The worker thread converts the epoch (safetensors +
    config.json, the best epoch so far at the root), then makes ONE commit holding every epoch
    not yet on the Hub and a manifest.json covering all epochs so far; the first commit also
    deletes another run's files (the branch then holds only this run, as `mirror` leaves it).
    A failed upload (network, Hub down) is logged and its epochs stay pending: the next epoch's
    commit carries them, and `mirror` after training makes the repo complete in any case (it
    also writes the model card and the run tag). Checkpoint files are never modified here;
    exports go to a private temporary folder removed by `close`.
    """

    def __init__(self, repo_id: str, run_id: str, revision: str | None = None, private: bool = False,
                 token: str | None = None, endpoint: str | None = None):
        self.repo_id, self.run_id = repo_id, run_id
        self.revision, self.private, self.endpoint = revision or None, private, endpoint
        self.token = hub.get_token(token)  # no token: fail at start, not silently at every epoch
        self._queue: queue.Queue = queue.Queue()
        self._tmp = Path(tempfile.mkdtemp(prefix="seqtrack-push-"))
        self._stage = self._tmp / "stage"
        self._pending: dict[int, tuple[Path, float | None]] = {}
        self._files: dict[str, dict[str, Any]] = {}  # manifest entries of epochs exported so far
        self._scores: dict[int, float] = {}
        self._uploaded: set[int] = set()
        self._first_commit = True
        self._outstanding = 0  # queued epochs not yet attempted
        self._done = threading.Condition()
        self.last_error: str = ""
        self.commits: list[str] = []
        self._thread = threading.Thread(target=self._work, name="hub-epoch-uploader", daemon=True)
        self._thread.start()

    # -- the trainer's side ----------------------------------------------------------------------
    def on_checkpoint(self, epoch: int, checkpoint: str | Path, score: float | None = None) -> None:
        """Queue epoch `epoch` (its complete checkpoint file) for upload; returns immediately.
        `score` ranks epochs for the root weights (`epoch_ranking.row_score`: val AUC, else val IoU)."""
        with self._done:
            self._outstanding += 1
        self._queue.put((int(epoch), Path(checkpoint), score))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued epoch was attempted; True if that happened within `timeout`."""
        with self._done:
            return self._done.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self, timeout: float | None = 60.0) -> list[int]:
        """Stop the worker after its current upload (waiting at most `timeout` s); returns the
        epochs that are not on the Hub (for `mirror` to complete)."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("hub upload still running after %.0f s; leaving it (run `mirror` afterwards)",
                        timeout or 0)
        else:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return sorted(set(self._pending) - self._uploaded)

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        taken = 0
        while True:
            item = self._queue.get()
            if item is not None:
                epoch, path, score = item
                self._pending[epoch] = (path, score)
                taken += 1
                if not self._queue.empty():
                    continue  # more epochs queued already: one commit for all of them
            try:
                if taken:
                    self._push()
            finally:  # a bug in _push must not leave wait() hanging
                with self._done:
                    self._outstanding -= taken
                    self._done.notify_all()
                taken = 0
            if item is None:
                return

    def _push(self) -> None:
        todo = sorted(set(self._pending) - self._uploaded)
        if not todo:
            return
        try:
            upload = self._export(todo)
            message = f"MLflow run {self.run_id}: epoch(s) {', '.join(map(str, todo))} (during training)"
            result = hub.upload_folder(self.repo_id, upload, self.token, endpoint=self.endpoint,
                                       private=self.private, revision=self.revision,
                                       commit_message=message, delete_others=self._first_commit)
        except (SeqTrackError, OSError) as exc:
            self.last_error = str(exc)
            log.warning("background upload of epoch(s) %s to %s failed (%s); retried with the next "
                        "epoch, or run `mirror` after training", todo, self.repo_id, exc)
            return
        finally:
            shutil.rmtree(self._tmp / "upload", ignore_errors=True)
        self._first_commit = False
        self._uploaded.update(todo)
        self.commits.append(result.commit)
        self.last_error = ""
        log.info("pushed epoch(s) %s of run %s to %s (commit %s)", todo, self.run_id, result.repo_url,
                 result.commit[:12])

    def _export(self, todo: list[int]) -> Path:
        """Folder of this commit: the new epochs, the root weights, manifest.json."""
        for epoch in todo:
            path, score = self._pending[epoch]
            folder = self._stage / weights_dir(epoch)
            if not (folder / WEIGHTS_FILE).is_file():
                export_pretrained(load_checkpoint(path), folder, self.run_id)
                for name in (WEIGHTS_CONFIG, WEIGHTS_FILE):
                    rel = f"{weights_dir(epoch)}/{name}"
                    self._files[rel] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
                self._files[resume_path(epoch)] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            if score is not None:
                self._scores[epoch] = float(score)
        epochs = sorted(self._pending)
        # the rule of evaluate's 'best' and the mirror's root: highest finite score, earliest on ties
        ranked = epoch_ranking.best_epoch(self._scores.items(), epochs)
        best = ranked[0] if ranked is not None else max(epochs)
        upload = self._tmp / "upload"
        shutil.rmtree(upload, ignore_errors=True)
        for epoch in todo:  # hard links: no copy of a 1 GB file
            _link(self._stage / weights_dir(epoch), upload / weights_dir(epoch))
            target = upload / resume_path(epoch)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(self._pending[epoch][0], target)
        for name in (WEIGHTS_CONFIG, WEIGHTS_FILE):
            _link(self._stage / weights_dir(best) / name, upload / name)
            self._files[name] = self._files[f"{weights_dir(best)}/{name}"]
        document = {"format": MANIFEST_FORMAT, "mlflow_run_id": self.run_id, "best_epoch": best,
                    "epochs": epochs, "files": dict(sorted(self._files.items())), "complete": False}
        (upload / MANIFEST).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return upload


def _link(source: Path, target: Path) -> None:
    """Hard-link a file (or each file of a folder) to target; copy across file systems."""
    if source.is_dir():
        for item in source.iterdir():
            _link(item, target / item.name)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)
