"""hub.py wrappers against the fake Hub: endpoint and token rules, error mapping, one-commit
uploads with no-op detection, resumable downloads."""

from __future__ import annotations

import os

import pytest

from seqtrack_mlflow import hub
from seqtrack_mlflow.errors import HubError
from tests.fakehub import ACCEPTED_TOKEN, FakeHub, fake_hub  # noqa: F401 - fixture

WRONG = "hf_WRONGtokenRECOGNISABLE42xyz"


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def test_endpoint_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("SEQTRACK_HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.resolve_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example/")
    assert hub.resolve_endpoint() == "http://mirror.example"
    monkeypatch.setenv("SEQTRACK_HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub.resolve_endpoint() == "http://127.0.0.1:9"
    assert hub.resolve_endpoint("http://explicit") == "http://explicit"
    assert hub.repo_url("a/b", "http://x", "dataset") == "http://x/datasets/a/b"


def test_token_rules(monkeypatch, no_saved_token):
    with pytest.raises(HubError, match=r"no Hugging Face token: set HF_TOKEN=\.\.\. or run `hf auth login`"):
        hub.get_token()
    assert hub.get_token(required=False) is None
    monkeypatch.setenv("HF_TOKEN", "hf_fromenvironment0123456789")
    assert hub.get_token() == "hf_fromenvironment0123456789"
    assert hub.get_token("hf_explicit") == "hf_explicit"


def test_scrub_removes_token_and_token_shapes():
    text = f"failed with {WRONG} and Bearer hf_another0123456789abcdefgh"
    clean = hub._scrub(text, WRONG)
    assert WRONG not in clean and "hf_another" not in clean and "***" in clean


def test_upload_without_token_sends_nothing(fake_hub, tmp_path, no_saved_token):  # noqa: F811
    (tmp_path / "a.txt").write_text("x")
    fake_hub.clear_requests()
    with pytest.raises(HubError, match="no Hugging Face token"):
        hub.upload_folder("me/repo", tmp_path, token=None, endpoint=fake_hub.url)
    assert fake_hub.requests == []


def test_upload_is_one_commit_and_idempotent(fake_hub, tmp_path):  # noqa: F811
    folder = tmp_path / "up"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch_1.ckpt").write_bytes(os.urandom(50_000))
    (folder / "notes.txt").write_text("hello\n")
    first = hub.upload_folder("me/repo", folder, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert first.changed and first.commit == fake_hub.head("me/repo")
    assert sorted(first.files) == ["checkpoints/epoch_1.ckpt", "notes.txt"]
    assert len(fake_hub.history("me/repo")) == 2
    again = hub.upload_folder("me/repo", folder, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert not again.changed and again.commit == first.commit
    assert len(fake_hub.history("me/repo")) == 2
    (folder / "notes.txt").write_text("changed\n")
    third = hub.upload_folder("me/repo", folder, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert third.changed and fake_hub.read("me/repo", "notes.txt") == b"changed\n"
    assert hub.list_repo_files("me/repo", endpoint=fake_hub.url) == [
        ".gitattributes", "checkpoints/epoch_1.ckpt", "notes.txt"]
    hashes = hub.remote_sha256("me/repo", endpoint=fake_hub.url)
    assert hashes["checkpoints/epoch_1.ckpt"] == fake_hub.tree("me/repo")["checkpoints/epoch_1.ckpt"].sha256
    assert hashes["notes.txt"] is None


def test_upload_to_a_branch(fake_hub, tmp_path):  # noqa: F811
    (tmp_path / "a.txt").write_text("on a branch")
    result = hub.upload_folder("me/branchy", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url,
                               revision="run-42")
    assert fake_hub.head("me/branchy", revision="run-42") == result.commit
    assert "a.txt" not in fake_hub.tree("me/branchy")  # main untouched


def test_rejected_token_error_is_clear_and_scrubbed(fake_hub, tmp_path):  # noqa: F811
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(HubError) as info:
        hub.upload_folder("me/repo", tmp_path, WRONG, endpoint=fake_hub.url)
    message = str(info.value)
    assert "rejected the token" in message and "401" in message and WRONG not in message
    assert info.value.__suppress_context__  # no chained client exception (headers) attached


def test_missing_repo_file_and_revision(fake_hub, tmp_path):  # noqa: F811
    with pytest.raises(HubError, match="repository not found"):
        hub.download_file("nobody/nothing", "x.bin", "model", tmp_path, endpoint=fake_hub.url)
    with pytest.raises(hub.RemoteFileMissing, match="file not found"):
        hub.download_file("l-lt/LaSOT", "nope.zip", "dataset", tmp_path, endpoint=fake_hub.url)
    with pytest.raises(HubError, match="revision not found"):
        hub.download_file("l-lt/LaSOT", "airplane.zip", "dataset", tmp_path, endpoint=fake_hub.url,
                          revision="v9")
    assert hub.head_commit("nobody/nothing", endpoint=fake_hub.url) is None
    with pytest.raises(HubError, match="explicit file name"):
        hub.download_file("l-lt/LaSOT", "", "dataset", tmp_path, endpoint=fake_hub.url)


def test_private_repo_needs_the_token(fake_hub, tmp_path):  # noqa: F811
    hub.create_repo("me/secret", ACCEPTED_TOKEN, endpoint=fake_hub.url, private=True)
    (tmp_path / "w.bin").write_bytes(b"\x00weights")
    hub.upload_folder("me/secret", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    with pytest.raises(HubError, match="repository not found"):
        hub.download_file("me/secret", "w.bin", "model", tmp_path / "anon", endpoint=fake_hub.url)
    path = hub.download_file("me/secret", "w.bin", "model", tmp_path / "auth", token=ACCEPTED_TOKEN,
                             endpoint=fake_hub.url)
    assert path.read_bytes() == b"\x00weights"


def test_download_resumes_after_a_dropped_connection(fake_hub, tmp_path):  # noqa: F811
    fake_hub.drop("download", times=1)
    path = hub.download_file("l-lt/LaSOT", "airplane.zip", "dataset", tmp_path, endpoint=fake_hub.url)
    assert path == tmp_path / "airplane.zip"
    assert path.read_bytes() == fake_hub.read("l-lt/LaSOT", "airplane.zip", "dataset")
    assert len(fake_hub.requests_to("GET", "/resolve/")) == 2  # the cut one, then the rest


def test_connection_refused_is_a_hub_error(tmp_path):
    server = FakeHub(tmp_path / "gone").start()
    url = server.url
    server.stop()
    with pytest.raises(HubError, match="connection to"):
        hub.create_repo("me/repo", ACCEPTED_TOKEN, endpoint=url)


# -- transports: Xet (the client's default) and plain LFS ------------------------------------------
def test_lfs_path_when_xet_is_disabled(fake_hub, tmp_path):  # noqa: F811
    (tmp_path / "w.safetensors").write_bytes(os.urandom(30_000))
    result = hub.upload_folder("me/lfs", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert result.transport == "lfs"  # conftest sets HF_HUB_DISABLE_XET=1
    assert fake_hub.tree("me/lfs")["w.safetensors"].lfs
    assert fake_hub.requests_to("PUT", "/_lfs/upload/") and not fake_hub.requests_to(contains="xet-")


def test_xet_default_path_falls_back_to_lfs_when_the_hub_refuses_xet(fake_hub, tmp_path, monkeypatch,  # noqa: F811
                                                                   caplog):
    """The installed client's default: Xet through hf-xet. This fake serves no Xet CAS (its
    chunk/xorb/shard protocol is far beyond a test server), so it refuses the Xet token, as a Hub
    without Xet does; the upload must then go through LFS, in the same single commit."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import is_package_available

    if not is_package_available("hf_xet"):
        pytest.skip("hf-xet is not installed: the client's default path is already LFS")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    data = os.urandom(40_000)
    (tmp_path / "model.safetensors").write_bytes(data)
    (tmp_path / "notes.txt").write_text("hi\n")
    result = hub.upload_folder("me/xet", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert fake_hub.requests_to("GET", "/xet-write-token/")  # Xet was tried first
    assert result.transport == "lfs" and "refused Xet storage" in caplog.text
    assert fake_hub.read("me/xet", "model.safetensors") == data
    assert len(fake_hub.history("me/xet")) == 2  # initial + one commit
    assert hf_constants.HF_HUB_DISABLE_XET is False  # the switch was restored


# -- exact state, tags -----------------------------------------------------------------------------
def test_delete_others_makes_the_branch_hold_exactly_the_folder(fake_hub, tmp_path):  # noqa: F811
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "a.bin").write_bytes(b"\x00a")
    (old / "checkpoints" / "b.bin").write_bytes(b"\x00b")
    hub.upload_folder("me/exact", old, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    new = tmp_path / "new"
    (new / "checkpoints").mkdir(parents=True)
    (new / "checkpoints" / "a.bin").write_bytes(b"\x00a")
    result = hub.upload_folder("me/exact", new, ACCEPTED_TOKEN, endpoint=fake_hub.url, delete_others=True)
    assert result.changed and result.deleted == ["checkpoints/b.bin"]
    assert set(fake_hub.tree("me/exact")) == {".gitattributes", "checkpoints/a.bin"}
    assert len(fake_hub.history("me/exact")) == 3
    again = hub.upload_folder("me/exact", new, ACCEPTED_TOKEN, endpoint=fake_hub.url, delete_others=True)
    assert not again.changed and again.deleted == []


def test_tags_are_created_and_moved(fake_hub, tmp_path):  # noqa: F811
    (tmp_path / "a.txt").write_text("1")
    first = hub.upload_folder("me/tagged", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url).commit
    assert hub.tag_commit("me/tagged", "run-1234abcd", first, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert not hub.tag_commit("me/tagged", "run-1234abcd", first, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    (tmp_path / "a.txt").write_text("2")
    second = hub.upload_folder("me/tagged", tmp_path, ACCEPTED_TOKEN, endpoint=fake_hub.url).commit
    assert hub.tag_commit("me/tagged", "run-1234abcd", second, ACCEPTED_TOKEN, endpoint=fake_hub.url)
    assert hub.list_tags("me/tagged", endpoint=fake_hub.url) == {"run-1234abcd": second}
    path = hub.download_file("me/tagged", "a.txt", "model", tmp_path / "d", endpoint=fake_hub.url,
                             revision="run-1234abcd")
    assert path.read_text() == "2"
