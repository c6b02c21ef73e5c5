"""The artifact store, local and remote (fsspec's in-memory filesystem stands for a remote
one: it is not local, so reads go through the cache as S3 reads would)."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

import pytest

from store.artifacts import ArtifactError, ArtifactStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "artifacts"))
    return ArtifactStore(f"memory://mlp-test-{uuid.uuid4().hex}",
                         cache_dir=tmp_path / "cache")


def test_put_and_read_back(store):
    data = os.urandom(3 * 1024 * 1024 + 17)
    n, digest = store.put_bytes("datasets/d1/data.csv", data)
    assert n == len(data) and digest == hashlib.sha256(data).hexdigest()
    assert store.exists("datasets/d1/data.csv")
    assert store.get_bytes("datasets/d1/data.csv") == data
    assert store.local_path("datasets/d1/data.csv").read_bytes() == data
    with store.open("datasets/d1/data.csv") as fh:
        assert fh.read(5) == data[:5]
    n2, d2 = store.put_stream("jobs/j/weights.pt", iter([b"ab", b"cd"]))
    assert (n2, d2) == (4, hashlib.sha256(b"abcd").hexdigest())


def test_overwrite_is_atomic_and_leaves_no_temporary_files(store, tmp_path):
    store.put_bytes("jobs/j/checkpoint.pt", b"one")
    store.put_bytes("jobs/j/checkpoint.pt", b"two")
    assert store.get_bytes("jobs/j/checkpoint.pt") == b"two"

    def failing():
        yield b"partial"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.put_stream("jobs/j/checkpoint.pt", failing())
    assert store.get_bytes("jobs/j/checkpoint.pt") == b"two"
    names = store.fs.ls(f"{store.root}/jobs/j", detail=False)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["checkpoint.pt"]


def test_put_file_and_delete_prefix(store, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"x" * 100)
    assert store.put_file("jobs/j1/weights.safetensors", src)[0] == 100
    store.put_bytes("jobs/j2/weights.safetensors", b"keep")
    store.delete_prefix("jobs/j1/")
    assert not store.exists("jobs/j1/weights.safetensors")
    assert store.exists("jobs/j2/weights.safetensors")
    store.delete_prefix("jobs/nothing-here/")  # no error


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../b", "", "/", "a//b"])
def test_bad_keys_are_refused(store, key):
    with pytest.raises(ArtifactError):
        store.put_bytes(key, b"x")


def test_missing_artifact(store):
    with pytest.raises(ArtifactError):
        store.get_bytes("jobs/none/weights.pt")
    with pytest.raises(ArtifactError):
        store.local_path("jobs/none/weights.pt")


# --------------------------------------------------------------------------- remote cache


@pytest.fixture
def remote(tmp_path):
    store = ArtifactStore(f"memory://mlp-test-{uuid.uuid4().hex}", cache_dir=tmp_path / "cache")
    yield store
    store.fs.rm(store.root, recursive=True)


def test_the_cache_directory_is_private(remote, tmp_path):
    remote.put_bytes("datasets/d/data.csv", b"a,b\n1,2\n")
    path = remote.local_path("datasets/d/data.csv")
    cache = tmp_path / "cache"
    assert path.is_relative_to(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    for directory in path.relative_to(cache).parents:
        assert stat.S_IMODE((cache / directory).stat().st_mode) == 0o700


def _copy_and_data(remote: ArtifactStore) -> tuple[Path, bytes]:
    data = os.urandom(200_000)
    remote.put_bytes("datasets/d1/data.npz", data)
    path = remote.local_path("datasets/d1/data.npz")
    assert path.read_bytes() == data
    return path, data


def test_a_corrupted_cached_copy_is_fetched_again(remote):
    path, data = _copy_and_data(remote)
    with open(path, "r+b") as fh:  # one flipped byte, size and name unchanged
        fh.seek(1000)
        fh.write(bytes([data[1000] ^ 0xFF]))
    assert remote.local_path("datasets/d1/data.npz").read_bytes() == data


def test_a_replaced_cached_copy_and_its_recorded_digest_are_not_trusted_over_the_callers(
        remote):
    """Someone rewrote the copy and the digest beside it; a caller who knows the artifact's
    sha256 (a dataset row records it) still gets the real content."""
    path, data = _copy_and_data(remote)
    evil = b"tampered" * 100
    path.write_bytes(evil)
    digest_file = remote._cache_root() / "sha256" / "datasets/d1/data.npz"
    digest_file.write_text(hashlib.sha256(evil).hexdigest())
    real = hashlib.sha256(data).hexdigest()
    assert remote.local_path("datasets/d1/data.npz", sha256=real).read_bytes() == data
    # and without the caller's digest, the one recorded at the fetch (now rewritten) counts
    assert remote.local_path("datasets/d1/data.npz").read_bytes() == data


def test_a_cached_copy_without_its_digest_is_fetched_again(remote):
    path, data = _copy_and_data(remote)
    (remote._cache_root() / "sha256" / "datasets/d1/data.npz").unlink()
    path.write_bytes(b"stale")
    assert remote.local_path("datasets/d1/data.npz").read_bytes() == data


def test_remote_content_that_does_not_match_the_callers_digest_is_refused(remote):
    remote.put_bytes("jobs/j/weights.safetensors", b"weights")
    with pytest.raises(ArtifactError, match="sha256"):
        remote.local_path("jobs/j/weights.safetensors", sha256="0" * 64)
    good = hashlib.sha256(b"weights").hexdigest()
    assert remote.local_path("jobs/j/weights.safetensors", sha256=good).read_bytes() == \
        b"weights"


def test_delete_prefix_removes_cached_copies(remote):
    path, _ = _copy_and_data(remote)
    remote.delete_prefix("datasets/d1/")
    assert not path.exists()
    with pytest.raises(ArtifactError):
        remote.local_path("datasets/d1/data.npz")


def test_a_cache_directory_others_can_write_is_emptied_and_made_private(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    planted = cache / "files" / "datasets" / "d" / "data.csv"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted")
    store = ArtifactStore(f"memory://mlp-test-{uuid.uuid4().hex}", cache_dir=cache)
    try:
        store.put_bytes("datasets/d/data.csv", b"real")
        assert store.local_path("datasets/d/data.csv").read_bytes() == b"real"
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    finally:
        store.fs.rm(store.root, recursive=True)


def test_a_cache_directory_of_another_user_or_a_link_is_refused(tmp_path):
    url = f"memory://mlp-test-{uuid.uuid4().hex}"
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    store = ArtifactStore(url, cache_dir=link)
    store.put_bytes("a/b", b"x")
    with pytest.raises(ArtifactError, match="not a directory"):
        store.local_path("a/b")
    if os.getuid() != 0:
        pytest.skip("making a directory of another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ArtifactError, match="another user"):
        ArtifactStore(url, cache_dir=theirs).local_path("a/b")
    store.fs.rm(store.root, recursive=True)


def test_the_default_cache_directory_is_per_user(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = ArtifactStore(f"memory://mlp-test-{uuid.uuid4().hex}")
    try:
        store.put_bytes("a/b", b"x")
        path = store.local_path("a/b")
        root = path.parents[2]
        assert root.parent == tmp_path and f"-{os.getuid()}-" in root.name
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
    finally:
        store.fs.rm(store.root, recursive=True)
