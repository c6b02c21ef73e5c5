"""The artifact store on S3, against a real S3 protocol server (moto's, in a subprocess: see
tests/store/conftest.py): round trips, what atomic means there, bounded memory for a large
file, corrupted objects refused, the bounded local cache, and a dataset uploaded through the
HTTP API and read back the way a worker reads it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.artifacts import (
    S3_BLOCK,
    ArtifactError,
    ArtifactStore,
    s3_storage_options,
)
from tests.s3_server import MotoServer

MiB = 1024 * 1024


@pytest.fixture
def s3(s3_url: str, tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(s3_url, cache_dir=tmp_path / "cache")


def _object_key(store: ArtifactStore, key: str) -> tuple[str, str]:
    """(bucket, object key) of an artifact, for a boto3 client."""
    bucket, _, prefix = store.root.partition("/")
    return bucket, f"{prefix}/{key}"


def _names(server: MotoServer, store: ArtifactStore) -> list[str]:
    """Every object under the store's prefix, relative to it."""
    bucket, prefix = _object_key(store, "")
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix) for o in listing.get("Contents", []))


def _pending_uploads(server: MotoServer, store: ArtifactStore) -> list[str]:
    bucket, prefix = _object_key(store, "")
    uploads = server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [u["Key"] for u in uploads.get("Uploads", [])]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- configuration


def test_the_endpoint_comes_from_the_aws_variables():
    assert s3_storage_options({})["use_listings_cache"] is False
    assert "client_kwargs" not in s3_storage_options({})
    assert s3_storage_options({"AWS_ENDPOINT_URL": "http://minio:9000"})["client_kwargs"] == \
        {"endpoint_url": "http://minio:9000"}
    # the S3-specific variable wins over the general one, as in botocore
    both = {"AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_S3": "http://s3:2"}
    assert s3_storage_options(both)["client_kwargs"] == {"endpoint_url": "http://s3:2"}
    ignored = {**both, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert "client_kwargs" not in s3_storage_options(ignored)


def test_the_store_reaches_the_server_named_by_aws_endpoint_url_s3(
        s3_url, s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    store = ArtifactStore(s3_url, cache_dir=tmp_path / "cache")
    assert store.is_s3 and not store.is_local
    store.put_bytes("a/b", b"through the S3 endpoint")
    assert store.get_bytes("a/b") == b"through the S3 endpoint"


def test_settings_read_the_cache_limit_and_refuse_an_s3_url_without_a_bucket(monkeypatch,
                                                                            tmp_path):
    from store.settings import CommonSettings, ConfigError

    monkeypatch.setenv("MLP_ARTIFACTS_CACHE_MAX_BYTES", "12345")
    monkeypatch.setenv("MLP_ARTIFACTS_URL", "s3://some-bucket/prefix")
    settings = CommonSettings.load(data_dir=tmp_path)
    assert settings.artifacts_cache_max_bytes == 12345
    store = ArtifactStore.from_settings(settings)
    assert store.cache_max_bytes == 12345 and store.is_s3
    monkeypatch.setenv("MLP_ARTIFACTS_URL", "s3:///prefix")
    with pytest.raises(ConfigError, match="MLP_ARTIFACTS_URL"):
        CommonSettings.load(data_dir=tmp_path)
    monkeypatch.setenv("MLP_ARTIFACTS_URL", "s3://b/p")
    monkeypatch.setenv("MLP_ARTIFACTS_CACHE_MAX_BYTES", "-1")
    with pytest.raises(ConfigError, match="MLP_ARTIFACTS_CACHE_MAX_BYTES"):
        CommonSettings.load(data_dir=tmp_path)


# --------------------------------------------------------------------------- round trips


def test_round_trip(s3, s3_server, tmp_path):
    data = os.urandom(3 * MiB + 17)
    n, digest = s3.put_bytes("datasets/d1/data.csv", data)
    assert (n, digest) == (len(data), _sha(data))
    assert s3.exists("datasets/d1/data.csv") and s3.size("datasets/d1/data.csv") == len(data)
    assert s3.get_bytes("datasets/d1/data.csv") == data
    with s3.open("datasets/d1/data.csv") as fh:
        assert fh.read(5) == data[:5]
    assert s3.local_path("datasets/d1/data.csv").read_bytes() == data

    src = tmp_path / "w.bin"
    src.write_bytes(b"w" * 1000)
    assert s3.put_file("jobs/j1/weights.safetensors", src) == (1000, _sha(b"w" * 1000))
    assert s3.put_stream("jobs/j1/log.txt", iter([b"ab", b"", b"cd"])) == (4, _sha(b"abcd"))
    s3.put_bytes("datasets/d10/data.csv", b"a sibling whose name starts the same")
    s3.put_bytes("jobs/j1/empty", b"")
    assert s3.get_bytes("jobs/j1/empty") == b""

    # each object carries its sha256; nothing else was written (no temporary objects)
    bucket, key = _object_key(s3, "datasets/d1/data.csv")
    head = s3_server.client().head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"sha256": digest}
    assert _names(s3_server, s3) == ["datasets/d1/data.csv", "datasets/d10/data.csv",
                                     "jobs/j1/empty", "jobs/j1/log.txt",
                                     "jobs/j1/weights.safetensors"]

    cached = s3.local_path("datasets/d1/data.csv")
    s3.delete_prefix("datasets/d1/")
    assert not s3.exists("datasets/d1/data.csv") and not cached.exists()
    assert s3.exists("datasets/d10/data.csv")
    s3.delete("jobs/j1/log.txt")
    s3.delete("jobs/j1/never-written")  # no error
    s3.delete_prefix("jobs/nothing-here/")
    assert _names(s3_server, s3) == ["datasets/d10/data.csv", "jobs/j1/empty",
                                     "jobs/j1/weights.safetensors"]
    for missing in ("datasets/d1/data.csv", "jobs/j1/log.txt"):
        with pytest.raises(ArtifactError, match="not found"):
            s3.get_bytes(missing)
        with pytest.raises(ArtifactError, match="not found"):
            s3.local_path(missing)


def test_a_store_on_another_machine_sees_what_this_one_wrote(s3, s3_url, tmp_path):
    """Two stores on one URL, as the API and a worker: no listing cached in one hides what
    the other wrote or deleted."""
    other = ArtifactStore(s3_url, cache_dir=tmp_path / "other-cache")
    assert not other.exists("jobs/j/checkpoint.pt")
    s3.put_bytes("jobs/j/checkpoint.pt", b"one")
    assert other.exists("jobs/j/checkpoint.pt")
    assert other.get_bytes("jobs/j/checkpoint.pt") == b"one"
    s3.delete_prefix("jobs/j/")
    assert not other.exists("jobs/j/checkpoint.pt")


# --------------------------------------------------------------------------- atomicity
#
# On S3 a write is atomic by itself: an object appears only when its upload completes (one
# PUT, or CompleteMultipartUpload), so the store writes straight to the key, and a failed
# write aborts its multipart upload. A reader sees the old object or the new one, whole.


def _blocks(count: int, fill: bytes) -> list[bytes]:
    return [fill * S3_BLOCK for _ in range(count)]


def test_an_object_being_uploaded_is_invisible_until_it_is_complete(s3, s3_server):
    old = b"old content"
    s3.put_bytes("jobs/j/weights.pt", old)
    new = _blocks(3, b"n")  # three parts of a multipart upload
    seen: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        for i, block in enumerate(new):
            yield block
            if i == 1:  # parts are on the server now, the upload not complete
                assert _pending_uploads(s3_server, s3) == [
                    _object_key(s3, "jobs/j/weights.pt")[1]]
                seen.append(s3.get_bytes("jobs/j/weights.pt"))
                assert _names(s3_server, s3) == ["jobs/j/weights.pt"]

    # the S3 write itself, fed a stream we can pause (put_stream spools to a local file first)
    s3._put_s3_object("jobs/j/weights.pt", chunks(), sha256=_sha(b"".join(new)))
    assert seen == [old]
    assert s3.get_bytes("jobs/j/weights.pt") == b"".join(new)
    assert _pending_uploads(s3_server, s3) == []


def test_a_failed_write_leaves_the_old_object_and_no_upload(s3, s3_server, tmp_path):
    s3.put_bytes("jobs/j/checkpoint.pt", b"two")

    def failing() -> Iterator[bytes]:
        yield from _blocks(2, b"x")  # a multipart upload is under way
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        s3._put_s3_object("jobs/j/checkpoint.pt", failing(), sha256="0" * 64)
    with pytest.raises(RuntimeError):
        s3.put_stream("jobs/j/checkpoint.pt", failing())
    # content that is not what was hashed before the upload (a file changed meanwhile)
    with pytest.raises(ArtifactError, match="changed while it was being stored"):
        s3._put_s3_object("jobs/j/checkpoint.pt", iter(_blocks(2, b"y")), sha256="0" * 64)
    assert s3.get_bytes("jobs/j/checkpoint.pt") == b"two"
    assert _names(s3_server, s3) == ["jobs/j/checkpoint.pt"]
    assert _pending_uploads(s3_server, s3) == []


def test_concurrent_readers_see_one_version_whole(s3):
    """A writer replaces a three-part object again and again; every read that succeeds,
    raw or checked, returns one version whole. A read whose object was replaced under it
    fails (s3fs pins its ranged reads to the ETag it opened), never mixes versions."""
    versions = {fill: b"".join(_blocks(2, fill)) + fill * 1000 for fill in (b"a", b"b")}
    digests = {_sha(v) for v in versions.values()}
    s3.put_bytes("jobs/j/model.bin", versions[b"a"])
    stop = threading.Event()
    reads: list[str] = []
    failures: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                with s3.open("jobs/j/model.bin") as fh:  # unchecked: raw ranged reads
                    first = fh.read(S3_BLOCK // 2)
                    time.sleep(0.01)  # let a writer in between two ranges
                    reads.append(_sha(first + fh.read()))
            except (OSError, ArtifactError) as exc:
                failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            s3.put_bytes("jobs/j/model.bin", versions[b"ab"[i % 2:i % 2 + 1]])
    finally:
        stop.set()
        thread.join(timeout=60)
    assert reads, "the reader never finished a read"
    assert set(reads) <= digests
    assert s3.get_bytes("jobs/j/model.bin") == versions[b"b"]


def test_an_open_reader_fails_rather_than_mixing_versions(s3):
    one, two = b"1" * (3 * S3_BLOCK), b"2" * (3 * S3_BLOCK)
    s3.put_bytes("jobs/j/w", one)
    with s3.open("jobs/j/w") as fh:
        head = fh.read(1024)
        s3.put_bytes("jobs/j/w", two)
        fh.seek(2 * S3_BLOCK)  # outside what was read ahead
        with pytest.raises(OSError):
            fh.read(1024)
    assert head == b"1" * 1024


# --------------------------------------------------------------------------- memory


def _big_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for i in range(size // MiB):
            fh.write(i.to_bytes(8, "big") + block[8:])  # no two MiB alike


def test_a_large_upload_and_download_stream_in_bounded_memory(s3, tmp_path):
    """200 MiB up with put_file (the dataset upload's call) and down with local_path (the
    worker's): what Python allocates at most stays a few S3 blocks, not the file."""
    size = 200 * MiB
    src = tmp_path / "big.bin"
    _big_file(src, size)
    limit = 8 * S3_BLOCK  # 64 MiB: a third of the file
    tracemalloc.start()
    try:
        n, digest = s3.put_file("datasets/big/data.bin", src)
        _, up_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        copy = s3.local_path("datasets/big/data.bin", sha256=digest)
        _, down_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"200 MiB: upload peak {up_peak / MiB:.1f} MiB, download peak "
          f"{down_peak / MiB:.1f} MiB (Python allocations, tracemalloc)")
    assert n == size and copy.stat().st_size == size
    assert up_peak < limit, f"upload held {up_peak / MiB:.0f} MiB"
    assert down_peak < limit, f"download held {down_peak / MiB:.0f} MiB"


# --------------------------------------------------------------------------- corruption


def _corrupt(server: MotoServer, store: ArtifactStore, key: str, data: bytes, *,
             keep_metadata: bool) -> None:
    """Replace the object's bytes behind the store's back: a bad copy by another tool that
    kept its metadata, or a foreign write that did not."""
    bucket, object_key = _object_key(store, key)
    client = server.client()
    metadata = client.head_object(Bucket=bucket, Key=object_key)["Metadata"]
    client.put_object(Bucket=bucket, Key=object_key, Body=data,
                      Metadata=metadata if keep_metadata else {})


def test_a_corrupted_object_is_refused_not_used(s3, s3_server, tmp_path):
    data = os.urandom(100_000)
    _, digest = s3.put_bytes("datasets/d/data.npz", data)
    damaged = bytearray(data)
    damaged[5000] ^= 0xFF
    _corrupt(s3_server, s3, "datasets/d/data.npz", bytes(damaged), keep_metadata=True)
    with pytest.raises(ArtifactError, match="sha256"):
        s3.get_bytes("datasets/d/data.npz")
    with pytest.raises(ArtifactError, match="sha256"):
        s3.local_path("datasets/d/data.npz")  # the digest the object carries
    with pytest.raises(ArtifactError, match="sha256"):
        s3.local_path("datasets/d/data.npz", sha256=digest)  # the caller's
    cache = tmp_path / "cache" / "files"
    assert not [p for p in cache.rglob("*") if p.is_file()], "nothing corrupt was cached"

    # a foreign write without our metadata: the caller's digest (a dataset row's) catches it
    _corrupt(s3_server, s3, "datasets/d/data.npz", b"foreign", keep_metadata=False)
    with pytest.raises(ArtifactError, match="sha256"):
        s3.local_path("datasets/d/data.npz", sha256=digest)
    assert s3.get_bytes("datasets/d/data.npz") == b"foreign"  # nothing to check it against


def test_a_good_cached_copy_survives_a_corrupted_object(s3, s3_server):
    data = os.urandom(50_000)
    _, digest = s3.put_bytes("jobs/j/weights.safetensors", data)
    assert s3.local_path("jobs/j/weights.safetensors", sha256=digest).read_bytes() == data
    _corrupt(s3_server, s3, "jobs/j/weights.safetensors", b"junk", keep_metadata=True)
    assert s3.local_path("jobs/j/weights.safetensors", sha256=digest).read_bytes() == data


# --------------------------------------------------------------------------- the cache


def _cached(store: ArtifactStore) -> list[str]:
    files = store._cache_root() / "files"
    return sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())


def _age(path: Path, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def test_the_cache_evicts_the_least_recently_used_copies(s3_url, tmp_path):
    store = ArtifactStore(s3_url, cache_dir=tmp_path / "cache", cache_max_bytes=3000)
    for name in "abcd":
        store.put_bytes(f"datasets/{name}/data.csv", name.encode() * 1000)
    paths = {name: store.local_path(f"datasets/{name}/data.csv") for name in "abc"}
    for age, name in ((300, "a"), (200, "b"), (100, "c")):
        _age(paths[name], age)
    # a write in progress (another process fetching), older than all: never evicted
    partial = paths["a"].parent.parent / "e" / ".data.csv.tmp-0123"
    partial.parent.mkdir(mode=0o700)
    partial.write_bytes(b"p" * 10)
    _age(partial, 1000)

    assert store.local_path("datasets/a/data.csv").read_bytes() == b"a" * 1000  # used now
    store.local_path("datasets/d/data.csv")  # 4000 + 10 bytes > 3000: b goes, then c
    assert _cached(store) == ["datasets/a/data.csv", "datasets/d/data.csv",
                              "datasets/e/.data.csv.tmp-0123"]
    assert not (store._cache_root() / "sha256" / "datasets/b/data.csv").exists()
    # an evicted copy is fetched again when asked for
    assert store.local_path("datasets/b/data.csv").read_bytes() == b"b" * 1000


def test_a_copy_larger_than_the_cache_is_kept_until_the_next_one(s3_url, tmp_path):
    store = ArtifactStore(s3_url, cache_dir=tmp_path / "cache", cache_max_bytes=10)
    store.put_bytes("jobs/1/w", b"1" * 100)
    store.put_bytes("jobs/2/w", b"2" * 100)
    assert store.local_path("jobs/1/w").read_bytes() == b"1" * 100
    assert _cached(store) == ["jobs/1/w"]
    assert store.local_path("jobs/2/w").read_bytes() == b"2" * 100
    assert _cached(store) == ["jobs/2/w"]


# --------------------------------------------------------------------------- the HTTP API


def _csv(rows: int) -> bytes:
    out = io.StringIO()
    out.write("f1,f2,label\n")
    for i in range(rows):
        out.write(f"{i * 0.5:.1f},{(i % 7) * 1.5:.1f},{'abc'[i % 3]}\n")
    return out.getvalue().encode()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_dataset_uploaded_through_the_api_lives_on_s3_and_a_worker_reads_it(
        s3_url, s3_server, database_url, redis_url, tmp_path):
    from fastapi.testclient import TestClient

    from mlp_engine.errors import DataError
    from service.app import create_app
    from service.settings import Settings
    from store.keys import create_api_key
    from store.models import Job
    from worker.runner import WorkerContext, _load_data
    from worker.settings import WorkerSettings

    common = {"data_dir": tmp_path / "api", "database_url": database_url,
              "redis_url": redis_url, "artifacts_url": s3_url}
    settings = Settings(**common, reconcile_interval_s=0, rate_limit_per_minute=0)
    content = _csv(500)
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        assert services.artifacts.is_s3
        with services.session_factory() as session:
            headers = {"Authorization": f"Bearer {create_api_key(session, 't-s3')}"}
        r = client.post("/v1/datasets", headers=headers,
                        files={"file": ("iris.csv", content, "text/csv")})
        assert r.status_code == 201, r.text
        dataset = r.json()
        assert dataset["sha256"] == _sha(content) and dataset["n_rows"] == 500

        # in the bucket, under the configured prefix, carrying its digest
        bucket, key = _object_key(services.artifacts, f"datasets/{dataset['id']}/data.csv")
        obj = s3_server.client().get_object(Bucket=bucket, Key=key)
        assert obj["Body"].read() == content
        assert obj["Metadata"] == {"sha256": dataset["sha256"]}

        r = client.post("/v1/jobs", headers=headers, json={
            "dataset": {"id": dataset["id"]}, "model": {"hidden_dims": [4]}})
        assert r.status_code in (201, 202), r.text
        with services.session_factory() as session:
            job = session.get(Job, r.json()["id"])
            assert job is not None

        # a worker on another machine: its own store on the same URL, its own cache
        worker_settings = WorkerSettings(**common)
        ctx = WorkerContext(settings=worker_settings, session_factory=services.session_factory,
                            redis=None, worker_id="test-s3",
                            artifacts=ArtifactStore(s3_url, cache_dir=tmp_path / "worker"))
        x, y = _load_data(ctx, job)
        assert x.shape == (500, 2) and list(x.columns) == ["f1", "f2"]
        assert list(y[:4]) == ["a", "b", "c", "a"]

        # the object damaged in the bucket: a worker without a good copy refuses it
        damaged = content.replace(b"c\n", b"b\n", 1)
        s3_server.client().put_object(Bucket=bucket, Key=key, Body=damaged,
                                      Metadata=obj["Metadata"])
        ctx.artifacts = ArtifactStore(s3_url, cache_dir=tmp_path / "worker-2")
        with pytest.raises(DataError, match="artifact store"):
            _load_data(ctx, job)

        # a queued job holds its dataset: cancelled (at once) and deleted, it lets it go
        assert client.post(f"/v1/jobs/{job.id}/cancel", headers=headers).status_code == 202
        assert client.delete(f"/v1/jobs/{job.id}", headers=headers).status_code == 204
        r = client.delete(f"/v1/datasets/{dataset['id']}", headers=headers)
        assert r.status_code == 204, r.text
        assert _names(s3_server, services.artifacts) == []
