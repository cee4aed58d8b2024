"""The `download` command: a run's artifacts to a folder by script, clear errors otherwise."""

from __future__ import annotations

import mlflow

from seqtrack_mlflow import cli


def _run_with_artifacts(tmp_path) -> str:
    (tmp_path / "src" / "checkpoints").mkdir(parents=True)
    (tmp_path / "src" / "checkpoints" / "epoch_1.ckpt").write_bytes(b"weights")
    (tmp_path / "src" / "report.md").write_text("# report\n")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "src"))
    return run.info.run_id


def test_download_one_folder_or_everything(tmp_path, capsys):
    run_id = _run_with_artifacts(tmp_path)
    assert cli.main(["download", "--run-id", run_id, "--artifact-path", "checkpoints",
                     "--dest", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "checkpoints" / "epoch_1.ckpt").read_bytes() == b"weights"
    assert "epoch_1.ckpt" in capsys.readouterr().out
    assert cli.main(["download", "--run-id", run_id, "--dest", str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / "report.md").read_text() == "# report\n"
    assert (tmp_path / "all" / "checkpoints" / "epoch_1.ckpt").is_file()


def test_unknown_run_or_artifact_is_one_clear_line(tmp_path, capsys):
    run_id = _run_with_artifacts(tmp_path)
    assert cli.main(["download", "--run-id", "0123456789abcdef", "--dest", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: no MLflow run with id '0123456789abcdef'")
    assert cli.main(["download", "--run-id", run_id, "--artifact-path", "plots", "--dest", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err  # (above MLflow's progress bar)
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: run ") and "has no artifact 'plots'" in last and "checkpoints" in last
