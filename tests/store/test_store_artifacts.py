from __future__ import annotations

import hashlib
import os
import uuid

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
