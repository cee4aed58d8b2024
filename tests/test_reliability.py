"""Reliability and security, fast part (in-process): a NaN loss, a full disk, an unwritable
output folder, bad parameters and unknown run ids on every entry point, no network, untrusted
checkpoints from the Hub, fuzzed sequence folders, and a token that must appear nowhere.

The slow part (kill -9, signals, concurrency, a tracking server, `mlflow run`) is in
test_reliability_e2e.py.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from seqtrack_mlflow import cli, hub
from seqtrack_mlflow.data.lasot import read_sequence
from seqtrack_mlflow.errors import DataError, HubError, StorageError
from seqtrack_mlflow.publish.mirror import mirror_run
from seqtrack_mlflow.train import loop as trainer_module
from seqtrack_mlflow.train.checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint
from tests.fakehub import FakeHub, fake_hub, populate_lasot  # noqa: F401 - fixture
from tests.test_mirror import REPO as MIRROR_REPO
from tests.test_mirror import make_run

from .tiny import write_tiny_config

TOKEN = "hf_SEQTRACKTESTTOKEN123456789"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_reexec(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "8")
    monkeypatch.setenv("SEQTRACK_HASHSEED_SET", "1")


def runs() -> list:
    return MlflowClient().search_runs(["0"], max_results=1000)


def train_cli(tmp_path: Path, *args: str, epochs: int = 2, samples: int = 16) -> int:
    """`train` on the tiny config with `samples` per epoch (batch 8: two steps)."""
    config = write_tiny_config(tmp_path, train={"epochs": epochs}, data={"samples_per_epoch": samples})
    return cli.main(["train", "--config", str(config), "--output-dir", str(tmp_path / "outputs"), *args])


def one_error_line(err: str) -> str:
    """stderr ends with exactly one 'error: ...' line and holds no traceback (progress bars of
    the dataset library may come before it)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


def the_run():
    (run,) = runs()
    return run


def assert_no_half_checkpoint(folder: Path) -> None:
    """Every epoch_N.ckpt loads and holds epoch N; no temporary file is left."""
    for path in folder.glob("*"):
        assert not path.name.endswith(".tmp"), path
        if path.name.startswith("epoch_"):
            assert load_checkpoint(path)["epoch"] == int(path.name[6:-5])


# -- NaN / inf ------------------------------------------------------------------------------------
def test_nan_loss_stops_names_epoch_and_samples_keeps_last_checkpoint_and_fails_the_run(
        tmp_path, monkeypatch, capsys):
    calls = {"n": 0}

    class Diverging(trainer_module.SeqTrackActor):
        def __call__(self, batch):
            loss, stats = super().__call__(batch)
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 2, first batch: samples 1-8
                loss = loss * float("nan")
            return loss, stats

    monkeypatch.setattr(trainer_module, "SeqTrackActor", Diverging)
    assert train_cli(tmp_path) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "loss became nan at epoch 2, samples 1-8" in line and "last good checkpoint" in line
    run = the_run()
    assert run.info.status == "FAILED" and "NonFiniteLoss" in run.data.tags["seqtrack.error"]
    ckpts = tmp_path / "outputs" / run.info.run_id / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("epoch_*")) == ["epoch_1.ckpt"]
    assert_no_half_checkpoint(ckpts)
    state = load_checkpoint(ckpts / "epoch_1.ckpt")
    assert all(torch.isfinite(t).all() for t in state["model_state_dict"].values())


# -- disk full, unwritable folders ----------------------------------------------------------------
def _failing_fdopen(monkeypatch, exc: OSError, target: str, after: int = 1000):
    """os.fdopen for the temp file of checkpoint `target` returns a file whose writes fail
    after `after` bytes with `exc` (a disk filling up mid-write); other files are untouched."""
    real = os.fdopen

    class Filling(io.RawIOBase):
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > after:
                raise exc
            return self.f.write(b)

        def fileno(self):
            return self.f.fileno()

        def flush(self):
            if not self.f.closed:
                self.f.flush()

        def close(self):
            if not self.closed:
                super().close()
                self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return Filling(f) if name.startswith(f".{target}.") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_disk_full_while_saving_a_checkpoint_is_one_line_and_keeps_the_earlier_one(
        tmp_path, monkeypatch, capsys):
    _failing_fdopen(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "epoch_2.ckpt")
    assert train_cli(tmp_path) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoint not saved" in line and "epoch_2.ckpt" in line
    assert "No space left on device (ENOSPC)" in line
    run = the_run()
    assert run.info.status == "FAILED"
    ckpts = tmp_path / "outputs" / run.info.run_id / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("epoch_*")) == ["epoch_1.ckpt"]
    assert_no_half_checkpoint(ckpts)


def test_save_checkpoint_turns_write_errors_into_storage_errors(tmp_path, monkeypatch):
    _failing_fdopen(monkeypatch, OSError(errno.EIO, os.strerror(errno.EIO)), "epoch_1.ckpt", after=10)
    with pytest.raises(StorageError, match=r"epoch_1.ckpt: Input/output error \(EIO\)"):
        save_checkpoint(tmp_path / "epoch_1.ckpt", {"w": torch.zeros(1000)})
    assert list(tmp_path.iterdir()) == []


def test_output_folder_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root ignores permissions: a path through a file fails
    config = write_tiny_config(tmp_path, train={"epochs": 1}, data={"samples_per_epoch": 8})
    assert cli.main(["train", "--config", str(config), "--output-dir", str(blocker / "outputs")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(blocker / "outputs") in line and "Not a directory (ENOTDIR)" in line
    assert the_run().info.status == "FAILED"


def test_read_only_checkpoint_folder(tmp_path, monkeypatch, capsys):
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".ckpt"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src), None, str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert train_cli(tmp_path, epochs=1, samples=8) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Permission denied (EACCES)" in line and "epoch_1.ckpt" in line
    run = the_run()
    assert run.info.status == "FAILED"
    assert not (tmp_path / "outputs" / run.info.run_id / "checkpoints").exists()  # no empty folder left


def test_stale_temp_files_are_removed_and_checkpoints_kept(tmp_path):
    save_checkpoint(tmp_path / "epoch_1.ckpt", {"w": torch.ones(2)})
    (tmp_path / ".epoch_2.ckpt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".manifest.json.x1y2.tmp").write_text("{")
    (tmp_path / "notes.tmp").write_text("not ours")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".epoch_2.ckpt.abc123.tmp", ".manifest.json.x1y2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.ckpt", "notes.tmp"]
    assert remove_stale_temp_files(tmp_path / "missing") == []


# -- bad parameters and unknown run ids, every entry point ----------------------------------------
CONFIG_COMMANDS = [["train"], ["summary"], ["debug-samples"], ["evaluate", "--checkpoint", "x.ckpt"]]


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("flags, expected", [
    (["--set", "train.epochs=-1"], "train.epochs: -1 is not allowed"),
    (["--set", "train.batch_size=abc"], "train.batch_size: 'abc' is not an integer"),
    (["--classes", "unicorn"], "data.classes: 'unicorn' is not allowed"),
    (["--set", "train.nonsense=1"], "unknown key(s) ['train.nonsense']"),
], ids=["epochs", "batch_size", "class", "key"])
def test_bad_parameters_stop_before_any_work(tmp_path, capsys, command, flags, expected):
    assert cli.main([*command, *flags, "--set", f"train.output_dir={tmp_path / 'o'}"]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert runs() == []  # nothing started, nothing left RUNNING
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [
    ["mirror", "--run-id", UNKNOWN_RUN, "--dry-run"],
    ["download", "--run-id", UNKNOWN_RUN, "--dest", "{tmp}/d"],
    ["evaluate", "--run-id", UNKNOWN_RUN],
], ids=["mirror", "download", "evaluate"])
def test_unknown_run_id(tmp_path, capsys, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    assert f"no MLflow run with id '{UNKNOWN_RUN}'" in one_error_line(capsys.readouterr().err)
    assert all(r.info.status != "RUNNING" for r in runs())


def test_resume_from_unknown_run_or_bad_checkpoint(tmp_path, capsys):
    assert train_cli(tmp_path, "--resume", UNKNOWN_RUN, epochs=1, samples=8) == 2
    assert f"no MLflow run with id '{UNKNOWN_RUN}'" in one_error_line(capsys.readouterr().err)
    truncated = save_checkpoint(tmp_path / "epoch_1.ckpt", {"model_state_dict": {"w": torch.ones(500)},
                                                           "optimizer_state_dict": {}, "epoch": 1, "seed": 8})
    truncated.write_bytes(truncated.read_bytes()[:300])
    assert train_cli(tmp_path, "--resume", str(truncated), epochs=1, samples=8) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(truncated) in line and "truncated or not a PyTorch checkpoint" in line
    assert train_cli(tmp_path, "--resume", str(tmp_path / "nope" / "epoch_3.ckpt"), epochs=1, samples=8) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert runs() == []  # refused before a run was created: nothing left RUNNING or FAILED


def test_lasot_without_data_and_without_network_fails_fast_and_clearly(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    monkeypatch.chdir(tmp_path)  # no data/lasot here
    config = write_tiny_config(tmp_path, train={"epochs": 1})
    assert cli.main(["train", "--config", str(config), "--data", "lasot", "--output-dir", "o"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "could not reach" in line and "not in the local cache" in line and "HF_HUB_OFFLINE" in line
    assert the_run().info.status == "FAILED"


# -- untrusted checkpoints from the Hub -----------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/seqtrack_reliability_pwned",))


def test_fetch_hub_refuses_tampered_checkpoints(fake_hub, tmp_path, monkeypatch, capsys):  # noqa: F811
    from tests.fakehub import ACCEPTED_TOKEN
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", ACCEPTED_TOKEN)
    run_id, out = make_run(tmp_path)
    assert cli.main(["mirror", "--run-id", run_id, "--repo-id", MIRROR_REPO]) == 0
    capsys.readouterr()
    fetch = ["fetch-hub", "--repo-id", MIRROR_REPO, "--epoch", "1"]

    # 1. Bytes changed on the Hub, manifest not: the sha256 check refuses (and deletes) it.
    data = bytearray((out / "checkpoints" / "epoch_1.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    fake_hub.add_files(MIRROR_REPO, {"resume/epoch_1.ckpt": bytes(data)})
    assert cli.main([*fetch, "--dest", str(tmp_path / "f1")]) == 2
    assert "the file was altered" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "f1").rglob("epoch_1.ckpt"))

    # 2. Checkpoint AND manifest replaced by an attacker: the safe loader still refuses the pickle.
    evil = tmp_path / "evil.ckpt"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "epoch": 1, "seed": 8,
                "payload": _Exploit()}, evil)
    import hashlib
    manifest = json.loads(fake_hub.read(MIRROR_REPO, "manifest.json"))
    manifest["files"]["resume/epoch_1.ckpt"] = {"sha256": hashlib.sha256(evil.read_bytes()).hexdigest(),
                                                "bytes": evil.stat().st_size}
    fake_hub.add_files(MIRROR_REPO, {"resume/epoch_1.ckpt": evil.read_bytes(),
                                     "manifest.json": json.dumps(manifest).encode()})
    assert cli.main([*fetch, "--dest", str(tmp_path / "f2")]) == 2
    assert "could execute code" in one_error_line(capsys.readouterr().err)
    assert not os.path.exists("/tmp/seqtrack_reliability_pwned")


# -- fuzzed sequence folders ----------------------------------------------------------------------
_JPEG = None


def _jpeg() -> bytes:
    global _JPEG
    if _JPEG is None:
        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (8, 6)).save(buf, "JPEG")
        _JPEG = buf.getvalue()
    return _JPEG


_box_line = st.one_of(
    st.tuples(*[st.integers(-5, 300)] * 4).map(lambda t: ",".join(map(str, t))),
    st.text(alphabet="0123456789,.-enaif \t\r", max_size=20),
)
_flags = st.one_of(
    st.lists(st.sampled_from(["0", "1", "", " 1", "2", "x"]), max_size=8).map(",".join),
    st.binary(max_size=24).map(lambda b: b.decode("latin-1")),
)
_folder = st.fixed_dictionaries({
    "groundtruth": st.one_of(st.none(), st.lists(_box_line, max_size=6).map("\n".join),
                             st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
    "full_occlusion": st.one_of(st.none(), _flags),
    "out_of_view": st.one_of(st.none(), _flags),
    "nlp": st.one_of(st.none(), st.binary(max_size=20)),
    "frames": st.one_of(st.none(), st.lists(
        st.tuples(st.sampled_from(["00000001.jpg", "00000002.jpg", "00000003.jpg", "00000004.jpg",
                                   "00000007.jpg", "1.jpg", "x.png", "00000002.JPG"]),
                  st.sampled_from(["jpeg", "empty", "truncated", "text", "folder"])), max_size=5)),
})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_folder, st.booleans())
def test_fuzz_whole_sequence_folder(spec, deep):
    """Whatever a sequence folder holds, read_sequence returns a sequence or raises DataError."""
    with tempfile.TemporaryDirectory() as d:
        seq = Path(d) / "cat-1"
        seq.mkdir()
        for name in ("groundtruth", "full_occlusion", "out_of_view"):
            if spec[name] is not None:
                (seq / f"{name}.txt").write_bytes(spec[name].encode("utf-8", "surrogatepass"))
        if spec["nlp"] is not None:
            (seq / "nlp.txt").write_bytes(spec["nlp"])
        if spec["frames"] is not None:
            (seq / "img").mkdir()
            for name, kind in spec["frames"]:
                path = seq / "img" / name
                if path.exists():
                    continue
                if kind == "folder":
                    path.mkdir()
                else:
                    data = {"jpeg": _jpeg(), "empty": b"", "truncated": _jpeg()[:20], "text": b"hello"}[kind]
                    path.write_bytes(data)
        try:
            s = read_sequence(seq, deep=deep)
        except DataError as exc:
            assert str(exc)
        else:
            assert s.boxes.shape == (len(s), 4) and np.isfinite(s.boxes).all()
            assert s.visible.shape == (len(s),) and s.visible.dtype == bool
            assert all(s.frame_path(i).is_file() for i in range(len(s)))


# -- the token appears nowhere --------------------------------------------------------------------
def _strings(obj) -> str:
    return json.dumps(obj, default=str)


def test_hf_token_appears_in_no_log_artifact_param_tag_metric_card_or_error(
        tmp_path, monkeypatch, capsys, caplog, tracking_uri):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    good = FakeHub(tmp_path / "hub-good", token=TOKEN).start()
    strict = FakeHub(tmp_path / "hub-strict", token="hf_ANOTHERtokenONLYthisHUBaccepts00").start()
    populate_lasot(good)
    texts: list[str] = []
    try:
        # A real (tiny) training run with the token in the environment, then its mirror.
        assert train_cli(tmp_path, epochs=1, samples=8) == 0
        (run,) = runs()
        run_id = run.info.run_id
        monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", good.url)
        assert cli.main(["mirror", "--run-id", run_id, "--repo-id", "tester/secrets"]) == 0
        assert any(r.auth for r in good.requests)  # the token was used (as a header)
        assert cli.main(["fetch-hub", "--repo-id", "tester/secrets", "--epoch", "1",
                         "--dest", str(tmp_path / "fetched")]) == 0
        # A Hub that rejects the token: 401, through the CLI and as an exception.
        monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", strict.url)
        assert cli.main(["mirror", "--run-id", run_id, "--repo-id", "tester/secrets"]) == 2
        with pytest.raises(HubError) as info:
            mirror_run(run_id=run_id, repo_id="tester/secrets")
        assert "rejected the token" in str(info.value)
        texts += [str(info.value), repr(info.value), str(info.value.__context__ or "")]
        with pytest.raises(HubError) as info:
            hub.upload_folder("tester/x", tmp_path / "fetched", token=None, endpoint=strict.url)
        texts += [str(info.value)]
        card = good.read("tester/secrets", "README.md").decode()
        remote = [good.read("tester/secrets", p) for p in good.tree("tester/secrets")]
    finally:
        good.stop()
        strict.stop()

    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text, card]
    client = MlflowClient()
    for r in runs():
        texts += [_strings(r.data.params), _strings(r.data.tags), _strings(list(r.data.metrics)),
                  _strings(r.info.run_name)]
        dest = tmp_path / "all-artifacts" / r.info.run_id
        mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(dest))
        files = [p for p in dest.rglob("*") if p.is_file()]
        assert any(p.name == "epoch_1.ckpt" for p in files)
        texts += [p.read_bytes().decode("latin-1") for p in files]
        assert client.get_run(r.info.run_id)
    local = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    texts += [p.read_bytes().decode("latin-1") for p in local]
    texts += [b.decode("latin-1") for b in remote]
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    texts.append(db.read_bytes().decode("latin-1"))
    hits = [t[:200] for t in texts if TOKEN in t]
    assert hits == []
    assert TOKEN[3:] not in "".join(texts)  # not even without its prefix


# -- every bad input: one `error:` line, exit 2 --------------------------------------------------
def _project_checkpoint(folder: Path, change=None) -> Path:
    """A complete, resumable epoch_1.ckpt of the tiny config, built without training (fast);
    `change(state)` damages it. No manifest beside it (a hand-made file)."""
    from seqtrack_mlflow.config import load_config
    from seqtrack_mlflow.model import build_seqtrack
    from seqtrack_mlflow.train.checkpoint import CHECKPOINT_FORMAT
    from seqtrack_mlflow.train.determinism import rng_state
    from seqtrack_mlflow.train.optim import build_optimizer

    cfg = load_config(write_tiny_config(folder / "cfg", train={"epochs": 1}, data={"samples_per_epoch": 8}))
    torch.manual_seed(cfg.seed)
    model = build_seqtrack(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg.train)
    state = {"format": CHECKPOINT_FORMAT, "model_state_dict": model.state_dict(),
             "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": scheduler.state_dict(),
             "epoch": 1, "seed": cfg.seed, "rng": rng_state(), "config": cfg.to_dict(),
             "metrics": [{"train_loss": 1.0, "val_iou": 0.1, "best_val_iou": 0.1, "seconds": 1.0, "lr": 1e-3}],
             "progress": {"global_samples": 8, "elapsed_seconds": 1.0}, "versions": {}, "run_id": ""}
    if change is not None:
        change(state)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "epoch_1.ckpt"
    torch.save(state, path)
    return path


def _first_tensor_wrong(state):
    key = next(iter(state["model_state_dict"]))
    state["model_state_dict"][key] = torch.zeros(3)


def _lasot_tree(tmp_path: Path, change=None) -> Path:
    """A local LaSOT tree (marked complete, so nothing is downloaded); `change(root)` damages it."""
    from seqtrack_mlflow.data.download import MARKER
    from tests.datatrees import make_lasot_tree

    root = make_lasot_tree(tmp_path / "lasot", frames=30, split_files=True)  # split files: no download
    for cls in ("airplane", "bicycle"):
        (root / cls / MARKER).write_text(json.dumps({"sequences": [f"{cls}-{n}" for n in (1, 2, 3)]}))
    if change is not None:
        change(root)
    return root


def _corrupt_frames(root: Path) -> None:
    """Every frame of the training sequence airplane-2 is garbage between valid JPEG start and
    end markers: the reader's quick checks pass, decoding the pixels fails."""
    for frame in (root / "airplane" / "airplane-2" / "img").glob("*.jpg"):
        frame.write_bytes(b"\xff\xd8\xff" + b"\x00" * 200 + b"\xff\xd9")


def _huge_boxes(root: Path) -> None:
    """1e308 boxes in every training sequence: once gave an OverflowError in crop_side_ok; now no
    crop is valid, so the sampler's bounded redraws end in one line."""
    for seq in ("airplane-2", "airplane-3", "bicycle-2", "bicycle-3"):
        gt = root / seq.split("-")[0] / seq / "groundtruth.txt"
        lines = gt.read_text().splitlines()
        gt.write_text("\n".join(["1e308,1e308,1e308,1e308"] * len(lines)) + "\n")


def _lasot_args(change):
    def build(tmp_path):
        root = _lasot_tree(tmp_path, change)
        return ["--data", "lasot", "--data-dir", str(root), "--set", "data.val_samples=2"]
    return build


def _ckpt_args(change):
    return lambda tmp_path: ["--resume", str(_project_checkpoint(tmp_path / "bad", change)), "--epochs", "2"]


def _config_file(text: bytes):
    def build(tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_bytes(text)
        return ["--config", str(path)]
    return build


# name: (argv builder, expected text in the error line, whether a run exists (FAILED) afterwards)
BAD_INPUTS = {
    "seed_too_big": (lambda t: ["--seed", "4294967296"], "seed: 4294967296 is not allowed", False),
    "section_not_mapping": (_config_file(b"model: 5\n"), "section 'model' must be a mapping", False),
    "config_not_utf8": (_config_file(b"seed: 8\n# caf\xe9\n"), "is not UTF-8 text", False),
    "embed_dim_0": (lambda t: ["--set", "model.embed_dim=0"], "model.embed_dim: 0 is not allowed", False),
    "decoder_dim_0": (lambda t: ["--set", "model.decoder_dim=0"], "model.decoder_dim: 0 is not allowed", False),
    "heads_not_dividing": (lambda t: ["--set", "model.num_heads=5"], "use a divisor of model.embed_dim", False),
    "mlp_zero_width": (lambda t: ["--set", "model.mlp_ratio=0.001"], "model.mlp_ratio: 0.001", False),
    "weight_decay_inf": (lambda t: ["--set", "train.weight_decay=inf"], "use a finite number", False),
    "epochs_absurd": (lambda t: ["--epochs", "100001"], "<= 100000", False),
    "pretrained_not_weights": (lambda t: ["--set", "model.pretrained=/etc/passwd"],
                               "'/etc/passwd' is truncated or not a PyTorch checkpoint", False),
    "resume_not_checkpoint": (lambda t: ["--resume", "/etc/passwd"],
                              "'/etc/passwd' is truncated or not a PyTorch checkpoint", False),
    "ckpt_no_config": (_ckpt_args(lambda s: s.pop("config")), "no usable 'config'", False),
    "ckpt_no_rng": (_ckpt_args(lambda s: s.pop("rng")), "no usable 'rng'", False),
    "ckpt_epoch_not_int": (_ckpt_args(lambda s: s.__setitem__("epoch", "1")), "epoch is '1', not a whole", False),
    "ckpt_wrong_shape": (_ckpt_args(_first_tensor_wrong), "tensor(s) of another shape", False),
    "ckpt_state_dict_list": (_ckpt_args(lambda s: s.__setitem__("model_state_dict",
                                                                list(s["model_state_dict"].values()))),
                             "holds no state dict", False),
    "ckpt_bad_rng": (_ckpt_args(lambda s: s["rng"].__setitem__("torch", torch.zeros(3, dtype=torch.uint8))),
                     "cannot be restored (RuntimeError", False),
    "ckpt_bad_optimizer": (_ckpt_args(lambda s: s.__setitem__("optimizer_state_dict",
                                                              {"state": {}, "param_groups": []})),
                           "cannot be restored (ValueError", False),
    "corrupt_frame_worker": (lambda t: [*_lasot_args(_corrupt_frames)(t), "--workers", "1"],
                             "unreadable JPEG", True),
    "huge_boxes": (_lasot_args(_huge_boxes), "no valid search crop", True),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_ends_in_one_error_line(tmp_path, monkeypatch, capsys, case):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # a test never reaches the network
    build, expected, makes_run = BAD_INPUTS[case]
    argv = build(tmp_path)
    assert train_cli(tmp_path, *argv, epochs=1, samples=8) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line, line
    if not makes_run:  # known up front: refused before an MLflow run exists
        assert runs() == []
        return
    run = the_run()
    assert run.info.status == "FAILED"
    tag = run.data.tags["seqtrack.error"]
    assert "\n" not in tag and line.removeprefix("error: ") in tag  # the same one line


def test_huge_frame_is_refused_before_decoding(monkeypatch):
    from seqtrack_mlflow.data import frames
    from seqtrack_mlflow.errors import DataError

    monkeypatch.setattr(frames, "MAX_FRAME_PIXELS", 8 * 6 - 1)
    with pytest.raises(DataError, match=r"frame of 8x6 = 48 pixels is larger than the limit of 47"):
        frames.decode_jpeg_bytes(_jpeg(), "x.jpg")
    monkeypatch.setattr(frames, "simplejpeg", None)  # the Pillow path checks too
    with pytest.raises(DataError, match="larger than the limit"):
        frames.decode_jpeg_bytes(_jpeg(), "x.jpg")


@pytest.mark.parametrize("method", ["log_params", "log_dataset"])
def test_sqlite_database_full_while_logging_params_or_inputs(tmp_path, monkeypatch, capsys, method):
    """The store's disk fills up exactly when the run logs its params (or its dataset input):
    MLflow's sqlite store raises "database or disk is full" from the commit."""
    import sqlite3

    import sqlalchemy.exc
    import sqlalchemy.orm

    from seqtrack_mlflow import experiment

    full = {"on": False}
    real_commit = sqlalchemy.orm.Session.commit

    def commit(self, *args, **kwargs):
        if full["on"]:
            raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
        return real_commit(self, *args, **kwargs)

    real_method = getattr(experiment.TrainingRun, method)

    def filling(self, *args, **kwargs):
        full["on"] = True
        return real_method(self, *args, **kwargs)

    monkeypatch.setattr(sqlalchemy.orm.Session, "commit", commit)
    monkeypatch.setattr(experiment.TrainingRun, method, filling)
    assert train_cli(tmp_path, epochs=1, samples=8) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "database or disk is full" in line and "MLflow tracking at sqlite:///" in line


def test_skip_bad_sequences_redraws_unreadable_frames_deterministically(tmp_path, monkeypatch):
    """Frames that only fail when decoded: with --skip-bad-sequences the draw is made again from
    the sample's own generator, so runs with 0 and 1 workers are identical, and the redraws are
    counted (epoch/skipped_samples)."""
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    root = _lasot_tree(tmp_path, _corrupt_frames)
    ids = []
    for workers in ("0", "1"):
        before = {r.info.run_id for r in runs()}
        assert train_cli(tmp_path / workers, "--data", "lasot", "--data-dir", str(root), "--workers", workers,
                         "--skip-bad-sequences", "--set", "data.val_samples=2", epochs=1, samples=16) == 0
        (run_id,) = {r.info.run_id for r in runs()} - before
        ids.append(run_id)
    client = MlflowClient()
    hist = [{k: [(m.step, m.value) for m in client.get_metric_history(r, k)]
             for k in ("train/loss", "epoch/train_loss", "epoch/skipped_samples")} for r in ids]
    assert hist[0] == hist[1]
    (skipped,) = hist[0]["epoch/skipped_samples"]
    assert skipped[1] >= 1  # airplane-2 is a quarter of the training sequences: 16 samples hit it


# -- corrupted checkpoints --------------------------------------------------------------------------
def _flip_byte(path: Path) -> None:
    """Flip one byte in place (the local file is a hard link to the stored artifact: both change)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_flipped_byte_is_refused_by_resume_and_evaluate_and_never_adopted(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a run id's checkpoints are fetched
    assert train_cli(tmp_path, epochs=2, samples=8) == 0
    run_id = the_run().info.run_id
    ckpts = tmp_path / "outputs" / run_id / "checkpoints"
    good = {p.name: p.read_bytes() for p in ckpts.glob("epoch_*.ckpt")}
    _flip_byte(ckpts / "epoch_2.ckpt")
    capsys.readouterr()
    for argv in (["--resume", str(ckpts / "epoch_2.ckpt")], ["--resume", run_id]):
        assert train_cli(tmp_path, *argv, epochs=3, samples=8) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "epoch_2.ckpt does not match" in line and "manifest.json" in line and "refusing it" in line
    assert cli.main(["evaluate", "--checkpoint", str(ckpts / "epoch_2.ckpt")]) == 2
    assert "epoch_2.ckpt does not match" in one_error_line(capsys.readouterr().err)
    assert len(runs()) == 1  # every refusal came before a run was created

    # epoch_2 intact, epoch_1 corrupt: the resume would adopt epoch_1 and record its hash: refused.
    (ckpts / "epoch_2.ckpt").write_bytes(good["epoch_2.ckpt"])  # a new file: the store's copy stays flipped
    _flip_byte(ckpts / "epoch_1.ckpt")
    assert train_cli(tmp_path, "--resume", str(ckpts / "epoch_2.ckpt"), epochs=3, samples=8) == 2
    assert "epoch_1.ckpt does not match" in one_error_line(capsys.readouterr().err)
    assert len(runs()) == 1

    # No manifest beside it: loads, with a warning that it is unverified.
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "epoch_2.ckpt").write_bytes(good["epoch_2.ckpt"])
    caplog.set_level(logging.WARNING)
    assert train_cli(tmp_path, "--resume", str(loose / "epoch_2.ckpt"), epochs=3, samples=8) == 0
    assert "has no manifest.json beside it: it is loaded unverified" in caplog.text
    resumed = next(r for r in runs() if r.info.run_id != run_id)
    manifest = json.loads((tmp_path / "outputs" / resumed.info.run_id / "checkpoints" / "manifest.json").read_text())
    import hashlib
    assert {e["file"]: e["sha256"] for e in manifest["checkpoints"]}["epoch_2.ckpt"] == \
        hashlib.sha256(good["epoch_2.ckpt"]).hexdigest()
