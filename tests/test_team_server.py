# ruff: noqa: F811  (pytest fixtures imported by name: team, fake_hub)
"""A team's shared tracking server, for real: PostgreSQL behind `mlflow server` (proxied
artifacts, basic auth), several trainings and machines at once (tests/pgserver_fixture.py).

Every process here is a real CLI subprocess logged in as an ordinary user; each test works in
an experiment of its own on the one session server. The tiny config trains in seconds; the
whole file takes about 3-4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import epoch_ranking

from .conftest import REPO
from .fakehub import ACCEPTED_TOKEN, fake_hub  # noqa: F401 - fixture
from .pgserver_fixture import USER, python_env, team, team_server  # noqa: F401 - fixture
from .test_reliability_e2e import Child, assert_same_checkpoint, child_env
from .tiny import write_tiny_config

pytestmark = pytest.mark.slow

EPOCHS = 2
# Wall-clock figures differ between any two runs; every other metric must match value for value.
CLOCK_WORDS = ("time/", "fps", "system/", "seconds")
WRITTEN: list[Path] = []  # every folder the runs of this file wrote into (searched for credentials)


@pytest.fixture(autouse=True)
def tracking_uri(team, monkeypatch, tmp_path_factory) -> str:
    """Overrides conftest's per-test sqlite store: this process reads the team server as USER."""
    for key, value in team.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return team.url


def client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def experiment(name: str) -> str:
    """A new experiment on the team server (its runs' artifacts: mlflow-artifacts:/...)."""
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    client().create_experiment(name)
    return name


def tiny(folder: Path, **model) -> Path:
    return write_tiny_config(folder, train={"epochs": EPOCHS}, model={"dropout": 0.1, **model})


def train(folder: Path, config: Path, exp: str, team, *extra: str, seed: int = 8, registered: str = "",
          hook=None, **env: str) -> Child:
    """`python -m seqtrack_mlflow train` as USER into experiment `exp` (outputs in folder/out)."""
    WRITTEN.append(folder)
    argv = ["train", "--config", str(config), "--output-dir", str(folder / "out"), "--seed", str(seed),
            "--set", f"mlflow.registered_model={registered or exp}", "--no-system-metrics", *extra]
    return Child(folder, argv, hook=hook, **{**team.env(), "MLFLOW_EXPERIMENT_NAME": exp, **python_env(), **env})


def runs_in(name: str) -> list:
    exp = client().get_experiment_by_name(name)
    return client().search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def the_new_run(name: str, before: set[str]) -> str:
    (run_id,) = {r.info.run_id for r in runs_in(name)} - before
    return run_id


def comparable_metrics(c: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run but the wall-clock ones, as (step, value) lists."""
    keys = [k for k in c.get_run(run_id).data.metrics if not any(w in k for w in CLOCK_WORDS)]
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def wait_all(children: list[Child]) -> None:
    for child in children:
        assert child.wait(timeout=600) == 0, child.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(team, tmp_path_factory) -> tuple[str, Path, dict]:
    """One uninterrupted seed-8 training through the server: (run id, checkpoints, metrics)."""
    folder = tmp_path_factory.mktemp("team-reference")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test fixture is not set up yet
        for key, value in team.env().items():
            mp.setenv(key, value)
        mp.setenv("SEQTRACK_CACHE", str(tmp_path_factory.getbasetemp() / "seqtrack_cache"))
        exp = experiment("reference")
        child = train(folder, tiny(folder), exp, team)
        wait_all([child])
        (run,) = runs_in(exp)
        return run.info.run_id, folder / "out" / run.info.run_id / "checkpoints", comparable_metrics(client(), run.info.run_id)


# -- several trainings, an evaluation and a mirror at once ----------------------------------------
def test_three_trainings_an_evaluate_and_a_mirror_at_once(team, reference, tmp_path, fake_hub):  # noqa: F811
    ref_id, _, _ = reference
    exp = experiment("three")
    config = tiny(tmp_path / "cfg")
    seeds = (8, 9, 10)
    children = [train(tmp_path / f"seed{s}", config, exp, team, seed=s) for s in seeds]
    # The same three on a local sqlite store, at the same time (the values they must equal).
    sqlite = f"sqlite:///{tmp_path / 'local' / 'mlflow.db'}"
    children += [Child(tmp_path / f"local{s}", ["train", "--config", str(config), "--seed", str(s),
                                                "--output-dir", str(tmp_path / f"local{s}" / "out")],
                       MLFLOW_TRACKING_URI=sqlite) for s in seeds]
    WRITTEN.extend([tmp_path / "eval", tmp_path / "mirror"])
    evaluation = Child(tmp_path / "eval", ["evaluate", "--run-id", "models:/" + reference_model(ref_id) + "@champion",
                                           "--output-dir", str(tmp_path / "eval" / "out")],
                       **team.env(), **python_env())
    mirror = Child(tmp_path / "mirror", ["mirror", "--run-id", ref_id, "--repo-id", "team/seqtrack"],
                   **team.env(), SEQTRACK_HF_ENDPOINT=fake_hub.url, HF_TOKEN=ACCEPTED_TOKEN, HF_HUB_DISABLE_XET="1",
                   HF_HUB_OFFLINE="0")
    wait_all([*children, evaluation, mirror])

    c, local = client(), MlflowClient(sqlite)
    team_runs = {int(r.data.params["seed"]): r for r in runs_in(exp)}
    local_runs = {int(r.data.params["seed"]): r for r in local.search_runs(["0"])}
    assert sorted(team_runs) == sorted(local_runs) == list(seeds)
    for seed in seeds:
        run = team_runs[seed]
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        got = comparable_metrics(c, run.info.run_id)
        assert got == comparable_metrics(local, local_runs[seed].info.run_id), f"seed {seed}"
        assert set(got) >= {"epoch/train_loss", "epoch/val_iou", "train/loss"}
        # Artifacts through mlflow-artifacts:/ (the server's proxy): the very bytes written locally.
        local_ckpt = tmp_path / f"seed{seed}" / "out" / run.info.run_id / "checkpoints" / "epoch_2.ckpt"
        fetched = Path(c.download_artifacts(run.info.run_id, "checkpoints/epoch_2.ckpt", str(tmp_path / "dl" / str(seed))))
        assert hashlib.sha256(fetched.read_bytes()).digest() == hashlib.sha256(local_ckpt.read_bytes()).digest()

    # Registry: one version per run, each its run's best epoch by epoch_ranking's rule; the alias
    # `champion` on one of them (whichever run registered last moved it there).
    versions = c.search_model_versions(f"name = '{exp}'")
    assert len(versions) == len(seeds)
    for version in versions:
        run_id = version.tags["seqtrack.run_id"]
        points = [(m.step, m.value) for m in c.get_metric_history(run_id, "epoch/val_iou")]
        best = epoch_ranking.best_epoch(points, range(1, EPOCHS + 1))
        assert int(version.tags["seqtrack.epoch"]) == best[0], version
    champion = c.get_model_version_by_alias(exp, "champion")
    assert champion.version in {v.version for v in versions}

    # The evaluation (of the reference run's champion, by models:/ URI) and the mirror.
    assert "overall: AUC" in evaluation.stdout
    (eval_run,) = [r for r in c.search_runs([c.get_run(ref_id).info.experiment_id])
                   if r.data.tags.get("seqtrack.kind") == "evaluate"]
    assert eval_run.info.status == "FINISHED" and eval_run.data.tags["mlflow.parentRunId"] == ref_id
    assert "eval/auc" in eval_run.data.metrics
    tree = fake_hub.tree("team/seqtrack")
    assert {"model.safetensors", "README.md", "resume/epoch_2.ckpt", "manifest.json"} <= set(tree)
    assert c.get_run(ref_id).data.tags["hub.repo_id"] == "team/seqtrack"
    assert team.password not in fake_hub.read("team/seqtrack", "README.md").decode()  # the model card
    WRITTEN.append(fake_hub.storage)


def reference_model(ref_id: str) -> str:
    """The registered model the reference run registered (its experiment's name)."""
    return client().get_experiment(client().get_run(ref_id).info.experiment_id).name


# -- kill -9 mid-epoch, resume by run id through the server -----------------------------------------
def test_killed_mid_epoch_then_resumed_by_run_id_is_bit_exact(team, reference, tmp_path):
    _, ref_ckpts, ref_metrics = reference
    exp = experiment("resume")
    config = tiny(tmp_path / "cfg")
    child = train(tmp_path / "killed", config, exp, team, hook=("block", "Epoch 2 : 16 / 40 samples"))
    child.wait_for(child.marker.exists, "epoch 2")  # the child waits there: killed mid-epoch for sure
    child.proc.send_signal(signal.SIGKILL)
    child.wait()
    (killed,) = [r.info.run_id for r in runs_in(exp)]
    assert client().get_run(killed).info.status == "RUNNING"

    resumed_child = train(tmp_path / "resumed", config, exp, team, "--resume", killed)
    wait_all([resumed_child])
    resumed = the_new_run(exp, {killed})
    c = client()
    assert c.get_run(resumed).info.status == "FINISHED"
    assert c.get_run(killed).info.status == "KILLED"
    assert c.get_run(killed).data.tags["seqtrack.resumed_by"] == resumed
    assert comparable_metrics(c, resumed) == ref_metrics
    for epoch in range(1, EPOCHS + 1):
        name = f"epoch_{epoch}.ckpt"
        assert_same_checkpoint(ref_ckpts / name, tmp_path / "resumed" / "out" / resumed / "checkpoints" / name)

    # `mlflow run -e download` through the server: the resumed run's checkpoints, as logged.
    dest = tmp_path / "downloaded"
    WRITTEN.append(dest)
    result = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", "download",
                             "-P", f"run_id={resumed}", "-P", "artifact_path=checkpoints", "-P", f"dest={dest}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                            env={**child_env(**team.env(), **python_env()), "MLFLOW_EXPERIMENT_NAME": exp})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == ["epoch_1.ckpt", "epoch_2.ckpt", "manifest.json"]
    assert (dest / "checkpoints" / "epoch_2.ckpt").read_bytes() == (
        tmp_path / "resumed" / "out" / resumed / "checkpoints" / "epoch_2.ckpt").read_bytes()


# -- the server, or PostgreSQL under it, restarted mid-run ------------------------------------------
@pytest.mark.parametrize("what", ["mlflow-server", "postgresql"])
def test_restarted_mid_run_the_run_ends_clearly_and_resumes(team, reference, tmp_path, what):
    _, ref_ckpts, ref_metrics = reference
    exp = experiment(f"restart-{what}")
    config = tiny(tmp_path / "cfg")
    child = train(tmp_path / "cut", config, exp, team, hook=("block", "Epoch 2 : 16 / 40 samples"),
                  MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    child.wait_for(child.marker.exists, "epoch 2")  # the child waits there until the store is gone
    (cut,) = [r.info.run_id for r in runs_in(exp)]
    try:
        if what == "mlflow-server":
            team.stop_mlflow(signal.SIGKILL)
        else:
            team.pg.stop()
        child.marker.unlink()
        rc = child.wait(timeout=180)
    finally:
        if what == "mlflow-server":
            team.start_mlflow()
        else:
            team.start_postgres()
    ckpts = tmp_path / "cut" / "out" / cut / "checkpoints"
    assert (ckpts / "epoch_1.ckpt").is_file()  # kept
    err = child.stderr
    assert rc == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: MLflow tracking at " + team.url), err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in err
    assert str(ckpts) in err and f"--resume {cut}" in err  # where the checkpoints are, how to go on

    resumed = train(tmp_path / "resumed", config, exp, team, "--resume", cut)
    wait_all([resumed])
    new = the_new_run(exp, {cut})
    c = client()
    assert c.get_run(new).info.status == "FINISHED"
    assert c.get_run(cut).info.status == "KILLED"
    assert_same_checkpoint(ref_ckpts / "epoch_2.ckpt", tmp_path / "resumed" / "out" / new / "checkpoints" / "epoch_2.ckpt")
    # Metrics are sent in the background, so training went on while the store was away and wrote
    # epoch 2's checkpoint locally before the flush failed: the resume continues from the newest
    # verified checkpoint (local epoch 2 over the uploaded epoch 1). The epoch metrics come from
    # the checkpoints and equal the uninterrupted run's; the progress-block points that never
    # reached the store are the only loss (docs/team-server.md).
    resumed_from = int(c.get_run(new).data.tags["seqtrack.resumed_from_epoch"])
    got = comparable_metrics(c, new)
    for key, points in ref_metrics.items():
        if key.startswith("epoch/") or key == "val/no_motion_iou":
            assert got[key] == points, key
        else:  # per-block points: those of the epochs the store received are all there, exact
            assert set(got[key]) <= set(points) and got[key], key
    assert resumed_from in (1, 2)


# -- first use of an empty PostgreSQL database, by two trainings at once ----------------------------
def test_two_first_trainings_on_an_empty_postgresql_database(team, reference, tmp_path, monkeypatch):
    """No server: both processes talk to PostgreSQL directly and find no MLflow schema. Without
    a lock one of them fails in MLflow's schema creation (seen here: a duplicate-key error);
    experiment.store.prepare_store's advisory lock makes the first create it and the other wait."""
    _, _, ref_metrics = reference
    database = f"first_use_{uuid.uuid4().hex[:8]}"
    team.pg.create_database(database)
    uri = team.pg.uri(database)
    config = tiny(tmp_path / "cfg")
    WRITTEN.append(tmp_path)
    children = [Child(tmp_path / name, ["train", "--config", str(config), "--output-dir", str(tmp_path / "out")],
                      MLFLOW_TRACKING_URI=uri, **team.pg.env()) for name in "ab"]
    wait_all(children)
    for child in children:
        assert "Traceback" not in child.stderr
    monkeypatch.setenv("PGPASSFILE", team.pg.env()["PGPASSFILE"])
    direct = MlflowClient(uri)
    runs = direct.search_runs(["0"])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        assert comparable_metrics(direct, run.info.run_id) == ref_metrics
    conn = team.pg.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM alembic_version")
            assert cur.fetchone()[0] == 1  # the schema was made once
    finally:
        conn.close()


# -- several machines, simulated: two torchrun nodes on 127.0.0.1 ----------------------------------
def test_two_torchrun_nodes_log_one_run(team, tmp_path):
    """`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d` twice, as two machines would
    (each its own output folder); against the 2-process single-node run (`--nproc 2`).
    Dropout off: the comparison is the one of test_trainer's DDP test (losses within 1e-4)."""
    exp = experiment("nodes")
    config = tiny(tmp_path / "cfg", dropout=0.0)
    port = team_server.free_port()
    nodes = []
    for node in ("node0", "node1"):
        WRITTEN.append(tmp_path / node)
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", exp,
                "-m", "seqtrack_mlflow", "train", "--config", str(config), "--set", "train.nproc=2",
                "--output-dir", str(tmp_path / node / "out"), "--set", f"mlflow.registered_model={exp}"]
        nodes.append(NodeChild(tmp_path / node, argv, **team.env(), MLFLOW_EXPERIMENT_NAME=exp, **python_env()))
    single_exp = experiment("single-node")
    single = train(tmp_path / "single", config, single_exp, team, "--nproc", "2")
    for child in [*nodes, single]:
        assert child.wait(timeout=600) == 0, child.stderr[-3000:]

    (run,) = runs_in(exp)
    assert run.info.status == "FINISHED" and run.data.params["train.nproc"] == "2"
    # Checkpoints from rank 0 only: one node's folder has them, the other's has no checkpoint.
    with_ckpts = [n for n in ("node0", "node1") if list((tmp_path / n / "out").glob("*/checkpoints/epoch_*.ckpt"))]
    assert len(with_ckpts) == 1
    other = {"node0", "node1"} - set(with_ckpts)
    assert not list((tmp_path / other.pop()).rglob("*.ckpt"))
    names = {Path(a.path).name for a in client().list_artifacts(run.info.run_id, "checkpoints")}
    assert names == {"epoch_1.ckpt", "epoch_2.ckpt", "manifest.json"}
    (single_run,) = runs_in(single_exp)
    single_id = single_run.info.run_id
    two = [v for _, v in sorted((m.step, m.value) for m in client().get_metric_history(run.info.run_id, "epoch/train_loss"))]
    one = [v for _, v in sorted((m.step, m.value) for m in client().get_metric_history(single_id, "epoch/train_loss"))]
    assert len(two) == len(one) == EPOCHS
    assert two == pytest.approx(one, rel=1e-4)


class NodeChild(Child):
    """A torchrun agent (not the CLI): same files and waiting as Child."""

    def __init__(self, folder: Path, argv: list[str], **env: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.marker = folder / "unused"
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=folder, stdout=out, stderr=err, env=child_env(**env))


# -- authentication ---------------------------------------------------------------------------------
COMMANDS = {
    "train": lambda cfg, out: ["train", "--config", str(cfg), "--output-dir", str(out)],
    "evaluate": lambda cfg, out: ["evaluate", "--run-id", "0" * 32, "--output-dir", str(out)],
    "download": lambda cfg, out: ["download", "--dest", str(out)],
    "mirror": lambda cfg, out: ["mirror", "--dry-run", "--repo-id", "team/seqtrack"],
}


@pytest.mark.parametrize("who", ["no-credentials", "wrong-password"])
def test_without_valid_credentials_every_command_stops_with_one_line(team, tmp_path, who, monkeypatch):
    exp = experiment("auth")
    before = {r.info.run_id for r in runs_in(exp)}
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")  # the children inherit this process's environment
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    env = team.env(None) if who == "no-credentials" else team.env(USER, "not-" + team.password)
    config = tiny(tmp_path / "cfg")
    children = {name: Child(tmp_path / name, make(config, tmp_path / name / "out"), **env,
                            MLFLOW_EXPERIMENT_NAME=exp) for name, make in COMMANDS.items()}
    for name, child in children.items():
        assert child.wait(timeout=300) == 2, (name, child.stderr[-3000:])
        err = child.stderr
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "HTTP 401" in errors[0] and "MLFLOW_TRACKING_PASSWORD" in errors[0], (name, err)
        assert "Traceback" not in err, (name, err)
        assert not (tmp_path / name / "out").exists(), f"{name} did work before it was refused"
        assert team.password not in err
    for key, value in team.env().items():
        monkeypatch.setenv(key, value)
    assert {r.info.run_id for r in runs_in(exp)} == before


# -- credentials never written (last: searches what every test above wrote) -------------------------
def test_credentials_appear_nowhere_the_runs_wrote(team, reference, tmp_path):
    secret = team.password.encode()
    header = base64.b64encode(f"{USER}:{team.password}".encode())
    c = client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)
    assert runs, "the tests above made runs"
    for run in runs:
        text = repr((run.data.params, run.data.tags, sorted(run.data.metrics)))
        assert team.password not in text, run.info.run_id
    # The whole tracking database, as text.
    dump = subprocess.run([str(team_server.postgres_bin() / "pg_dump"), "-h", "127.0.0.1", "-p", str(team.pg.port),
                           "-U", team_server.DB_USER, "mlflow"], capture_output=True, env={**os.environ, **team.pg.env()},
                          check=True, timeout=120).stdout
    assert len(dump) > 10000 and secret not in dump and header not in dump
    # Every artifact on the server, every local output, log and report, the Hub's files.
    searched = 0
    for folder in [team.artifacts, *WRITTEN]:
        for path in Path(folder).rglob("*") if Path(folder).is_dir() else []:
            if path.is_file():
                data = path.read_bytes()
                assert secret not in data and header not in data, path
                searched += 1
    assert searched > 50
    assert list(team.artifacts.rglob("report.md")), "the runs' reports were among them"
