"""The artifact store: uploaded datasets, checkpoints and weights, by key.

A local directory by default, or any fsspec URL (`s3://bucket/prefix`, ...) so that workers
on other machines share it. A reader never sees half a file: a local or generic remote write
goes to a temporary name, then is renamed; an S3 object appears whole when its upload
completes (one PUT, or a multipart upload aborted when the write fails). Every write streams
and returns the sha256 and size of what it wrote.

On S3 (and S3-compatible stores: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` names the
endpoint) each object carries its sha256 in its metadata, and every whole read
(`get_bytes`, `local_path`) checks the bytes against it, or against the digest the caller
knows: an object that was corrupted or replaced is refused, never used.

A remote store keeps local copies of what `local_path` fetched, in a cache directory that
only this user can write (created 0700; one that others could write is refused or made
again) and that holds at most `cache_max_bytes` (`MLP_ARTIFACTS_CACHE_MAX_BYTES`): the copies
used least recently go first, never one being written or the one just asked for. Each copy's
sha256 is recorded beside it as it is written and checked again (recomputed) each time the
copy is reused: a copy that is corrupt or was changed is fetched again, never used.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store.settings import CommonSettings

__all__ = ["ArtifactStore", "ArtifactError", "sha256_file", "DEFAULT_CACHE_MAX_BYTES",
           "s3_storage_options"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK = MiB
DEFAULT_CACHE_MAX_BYTES = 5 * 1024 * MiB
# What an S3 upload or read holds in memory at a time: the part size of a multipart upload
# (at least 5 MiB; at most 10,000 parts, so up to 80 GiB an object) and the read-ahead of a
# read. fsspec's default, 50 MiB, would hold a dataset of that size whole.
S3_BLOCK = 8 * MiB
_S3_PROTOCOLS = frozenset({"s3", "s3a"})
_SHA256_METADATA = "sha256"  # x-amz-meta-sha256


class ArtifactError(Exception):
    """An artifact that cannot be stored or read."""


def sha256_file(path: str | Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a local file."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def s3_storage_options(env: dict[str, str] | None = None) -> dict[str, Any]:
    """s3fs options from the AWS environment. The endpoint of an S3-compatible store
    (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`) is passed explicitly: botocore reads
    these variables itself only since 1.31.68, and older aiobotocore pins older ones.
    Credentials and region stay botocore's to find (variables, files, instance roles)."""
    env = dict(os.environ) if env is None else env
    options: dict[str, Any] = {
        # listings cached in one process would hide what other processes wrote or deleted
        "use_listings_cache": False,
        # a store that stops answering fails the call (and the job's attempt, which is
        # retried from its checkpoint) instead of holding a worker forever
        "config_kwargs": {"connect_timeout": 10, "read_timeout": 60},
    }
    ignore = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true"
    endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip()
    if endpoint and not ignore:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def _check_key(key: str) -> str:
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ArtifactError(f"bad artifact key {key!r}")
    return key


class ArtifactStore:
    """Files under one root: a local directory path, `file://...` or any fsspec URL."""

    def __init__(self, url: str | Path, *, cache_dir: str | Path | None = None,
                 cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        import fsspec

        self.url = str(url)
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        options = s3_storage_options() if scheme in _S3_PROTOCOLS else {}
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as exc:
            raise ArtifactError(f"the artifact store {self.url} needs a package that is not "
                                f"installed ({exc}); for s3:// install the [s3] extra: "
                                "pip install 'mlp-training-service[s3]'") from exc
        self.fs = fs
        self.root = root.rstrip("/")
        protocols = _protocols(fs)
        self.is_local = "file" in protocols
        self.is_s3 = bool(_S3_PROTOCOLS.intersection(protocols))
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._cache_checked = False
        self.cache_max_bytes = cache_max_bytes

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> ArtifactStore:
        """The store `MLP_ARTIFACTS_URL` names, its cache bounded by
        `MLP_ARTIFACTS_CACHE_MAX_BYTES`."""
        assert settings.artifacts_url is not None  # filled in by the settings
        return cls(settings.artifacts_url, cache_max_bytes=settings.artifacts_cache_max_bytes)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # ----------------------------------------------------------------- paths

    def _path(self, key: str) -> str:
        return f"{self.root}/{_check_key(key)}"

    def _tmp_path(self, key: str) -> str:
        path = self._path(key)
        parent, name = path.rsplit("/", 1)
        return f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"

    # ----------------------------------------------------------------- writes

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write the chunks under `key` atomically; return (bytes, sha256). On S3 they are
        spooled to a local temporary file first (see below); `put_file` and `put_bytes`
        upload without one."""
        if self.is_s3:
            # the digest goes into the object's metadata, sent before its first byte: spool
            # to an anonymous local file (hashing on the way), then upload that
            with tempfile.TemporaryFile() as spool:
                h = hashlib.sha256()
                for chunk in chunks:
                    h.update(chunk)
                    spool.write(chunk)
                spool.seek(0)
                return self._put_s3_object(key, _read_chunks(spool), sha256=h.hexdigest())
        final, tmp = self._path(key), self._tmp_path(key)
        h = hashlib.sha256()
        n = 0
        try:
            if self.is_local:
                Path(final).parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as fh:
                    for chunk in chunks:
                        h.update(chunk)
                        n += len(chunk)
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
                _fsync_dir(Path(final).parent)
            else:
                self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
                with self.fs.open(tmp, "wb") as fh:
                    for chunk in chunks:
                        h.update(chunk)
                        n += len(chunk)
                        fh.write(chunk)
                self.fs.mv(tmp, final)
        except BaseException:
            self._remove_quietly(tmp)
            raise
        return n, h.hexdigest()

    def put_bytes(self, key: str, data: bytes) -> tuple[int, str]:
        if self.is_s3:
            view = memoryview(data)  # parts of S3_BLOCK, not one part of the whole
            return self._put_s3_object(
                key, (view[i:i + CHUNK] for i in range(0, len(view), CHUNK)),
                sha256=hashlib.sha256(data).hexdigest())
        return self.put_stream(key, [data])

    def put_file(self, key: str, local_path: str | Path) -> tuple[int, str]:
        if self.is_s3:
            _, digest = sha256_file(local_path)  # a local read: cheap beside the upload
            with open(local_path, "rb") as fh:
                return self._put_s3_object(key, _read_chunks(fh), sha256=digest)
        with open(local_path, "rb") as fh:
            return self.put_stream(key, _read_chunks(fh))

    def _put_s3_object(self, key: str, chunks: Iterable[bytes | memoryview], *,
                       sha256: str) -> tuple[int, str]:
        """Upload straight to the final key, its sha256 in its metadata. S3 shows an object
        only once its upload completes, so a reader sees the old object or the new one,
        whole; a failed write aborts the multipart upload and leaves the old one."""
        path = self._path(key)
        h = hashlib.sha256()
        n = 0
        fh = self.fs.open(path, "wb", block_size=S3_BLOCK, Metadata={_SHA256_METADATA: sha256})
        try:
            for chunk in chunks:
                h.update(chunk)
                n += len(chunk)
                fh.write(chunk)
            if not hmac.compare_digest(h.hexdigest(), sha256):
                raise ArtifactError(f"artifact {key!r} changed while it was being stored "
                                    f"(sha256 {h.hexdigest()}, not {sha256})")
            fh.close()  # the last part, then the upload completes: the object appears
        except BaseException:
            try:
                fh.discard()  # aborts the multipart upload, if one was started
            except OSError as exc:  # S3 removes it later (a lifecycle rule, if any)
                log.warning("cannot abort the upload of artifact %r: %s", key, exc)
            fh.closed = True  # closing would complete the upload: the half object
            raise
        return n, sha256

    # ----------------------------------------------------------------- reads

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        """A file object to read the artifact as a stream (unchecked: `get_bytes` and
        `local_path` check its sha256)."""
        if "r" not in mode:
            raise ArtifactError("artifacts are written with put_*; open() only reads")
        try:
            if self.is_s3:
                return self.fs.open(self._path(key), mode, block_size=S3_BLOCK)
            return self.fs.open(self._path(key), mode)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {key!r} not found") from None

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            data = fh.read()
            recorded = self._recorded_sha256(key, fh)
        if recorded is not None:
            _check_digest(key, hashlib.sha256(data).hexdigest(), recorded)
        return data

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def local_path(self, key: str, *, sha256: str | None = None) -> Path:
        """A local file with the artifact's content: the file itself for a local store, a
        cached download (written atomically, by key) for a remote one. Meant for immutable
        artifacts such as uploaded datasets.

        A cached copy is reused only while its sha256 (recomputed) is `sha256` when the
        caller knows it (a dataset's or weights' recorded digest), else the one recorded
        when it was fetched; otherwise it is fetched again. A fetched file whose digest is
        not `sha256`, or not the one the S3 object carries, raises ArtifactError."""
        if self.is_local:
            path = Path(self._path(key))
            if not path.exists():
                raise ArtifactError(f"artifact {key!r} not found")
            return path
        key = _check_key(key)
        root = self._cache_root()
        copy, recorded = root / "files" / key, root / "sha256" / key
        if copy.exists():
            want = sha256 or _read_digest(recorded)
            _, have = sha256_file(copy)
            if want is not None and hmac.compare_digest(have, want):
                _touch_atime(copy)  # used now: the last to be evicted
                return copy
            log.warning("cached copy of artifact %r does not match its sha256 (%s); "
                        "fetching it again", key,
                        "none recorded" if want is None else f"{have[:12]}... "
                        f"instead of {want[:12]}...")
        copy = self._fetch(key, copy, recorded, sha256)
        self._evict(root, keep=copy)
        return copy

    def _fetch(self, key: str, copy: Path, recorded: Path, sha256: str | None) -> Path:
        for directory in (copy.parent, recorded.parent):
            _mkdirs_private(directory)
        tmp = copy.with_name(f".{copy.name}.tmp-{uuid.uuid4().hex}")
        h = hashlib.sha256()
        try:
            with self.open(key) as src, _private_file(tmp) as dst:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                want = sha256 or self._recorded_sha256(key, src)
            digest = h.hexdigest()
            if want is not None:
                _check_digest(key, digest, want)
            _write_atomically(recorded, (digest + "\n").encode())
            os.replace(tmp, copy)
        finally:
            tmp.unlink(missing_ok=True)
        return copy

    def _recorded_sha256(self, key: str, fh: Any) -> str | None:
        """The sha256 an S3 object carries in its metadata, read from the very version
        `fh` reads (its ETag; a version written since is an error, not a mix-up); None
        elsewhere, or for an object written without one."""
        if not self.is_s3:
            return None
        etag = getattr(fh, "details", {}).get("ETag")
        bucket, object_key, _ = self.fs.split_path(self._path(key))
        try:
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=object_key,
                                   **({"IfMatch": etag} if etag else {}))
        except (OSError, ValueError) as exc:  # s3fs translates 412 and the like
            raise ArtifactError(f"artifact {key!r} changed while it was being read, or its "
                                f"metadata cannot be read ({exc}); try again") from exc
        value = str((head.get("Metadata") or {}).get(_SHA256_METADATA, "")).strip().lower()
        return value if len(value) == 64 else None

    # ----------------------------------------------------------------- the cache

    def _evict(self, root: Path, *, keep: Path) -> None:
        """Remove the copies used least recently (by access time, which `local_path` sets
        on each use) until the cache holds at most `cache_max_bytes`. Never a copy being
        written (a temporary name) nor `keep`, the one just handed out: a single copy larger
        than the limit stays until the next one comes."""
        files = root / "files"
        total = 0
        candidates: list[tuple[float, int, Path]] = []
        for directory, _, names in os.walk(files):
            for name in names:
                path = Path(directory) / name
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue  # evicted or replaced by another process meanwhile
                total += info.st_size
                if _is_partial(name) or path == keep:
                    continue
                candidates.append((info.st_atime, info.st_size, path))
        if total <= self.cache_max_bytes:
            return
        candidates.sort()
        for _, size, path in candidates:
            if total <= self.cache_max_bytes:
                break
            relative = path.relative_to(files)
            path.unlink(missing_ok=True)
            (root / "sha256" / relative).unlink(missing_ok=True)
            total -= size
            log.debug("evicted %s (%d bytes) from the artifact cache", relative, size)

    def _cache_root(self) -> Path:
        """The cache directory, made sure of once: ours, not a link, and writable by no
        one else (a directory that others could write is emptied and made again; one we
        do not own is refused)."""
        if self._cache_dir is None:
            self._cache_dir = self._default_cache_dir()
        if not self._cache_checked:
            _make_private_dir(self._cache_dir)
            self._cache_checked = True
        return self._cache_dir

    def _default_cache_dir(self) -> Path:
        tag = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        # per user: another user's directory of the same name is never ours to use
        return Path(tempfile.gettempdir()) / f"mlp-artifacts-{os.getuid()}-{tag}"

    def _existing_cache_root(self) -> Path | None:
        """The cache directory if this remote store has one already (checked), else None."""
        if self.is_local:
            return None
        if not os.path.lexists(self._cache_dir or self._default_cache_dir()):
            return None
        return self._cache_root()

    # ----------------------------------------------------------------- deletes

    def delete(self, key: str) -> None:
        self._remove_quietly(self._path(key))
        root = self._existing_cache_root()
        if root is not None:
            for tree in ("files", "sha256"):
                (root / tree / _check_key(key)).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every artifact under `prefix` (for example `jobs/<id>/`)."""
        path = self._path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        root = self._existing_cache_root()
        if root is not None:
            for tree in ("files", "sha256"):
                shutil.rmtree(root / tree / _check_key(prefix), ignore_errors=True)

    def _remove_quietly(self, path: str) -> None:
        """Remove a file if it is there (a temporary file after a failed write, an
        artifact being deleted); one that cannot be removed is logged and left."""
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except FileNotFoundError:
            pass  # removed meanwhile: what we wanted
        except OSError as exc:
            log.warning("cannot remove %s from the artifact store: %s", path, exc)


def _read_chunks(fh: IO[bytes]) -> Iterable[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


def _check_digest(key: str, have: str, want: str) -> None:
    if not hmac.compare_digest(have, want):
        raise ArtifactError(f"artifact {key!r} in the store has sha256 {have}, "
                            f"not the {want} recorded for it")


def _is_partial(name: str) -> bool:
    """A temporary file of a write in progress (`_fetch`, `_write_atomically`)."""
    return name.startswith(".") and ".tmp-" in name


def _touch_atime(path: Path) -> None:
    """Mark a copy as used now: file systems mounted noatime or relatime may not."""
    try:
        info = path.stat()
        os.utime(path, ns=(time.time_ns(), info.st_mtime_ns))
    except OSError as exc:  # evicted by another process meanwhile: harmless
        log.debug("cannot mark %s as used: %s", path, exc)


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable where the platform allows: some filesystems cannot
    open or fsync a directory, and the rename itself has happened either way."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("cannot fsync directory %s: %s", path, exc)
    finally:
        os.close(fd)


def _make_private_dir(path: Path) -> None:
    """Create `path` with mode 0700, or check that an existing one is a directory of ours
    that no one else can write; one others could write is emptied (what is in it may have
    been planted) and made again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise ArtifactError(f"cannot create the artifact cache directory {path}: "
                            f"{exc.strerror}") from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ArtifactError(f"the artifact cache {path} is not a directory (a link or a "
                            "file); remove it or choose another cache directory")
    if info.st_uid != os.getuid():
        raise ArtifactError(f"the artifact cache directory {path} belongs to another user "
                            f"(uid {info.st_uid}); remove it or choose another")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("the artifact cache directory %s could be written by other users; "
                    "emptying it and making it again with mode 0700", path)
        shutil.rmtree(path)
        path.mkdir(mode=0o700)
    elif info.st_mode & 0o077:
        os.chmod(path, 0o700)  # readable by others, but nothing could be planted: tighten


def _mkdirs_private(directory: Path) -> None:
    """`mkdir -p` with mode 0700 at every level it creates (`parents=True` would give the
    upper ones the umask's mode)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for level in reversed(missing):
        level.mkdir(mode=0o700, exist_ok=True)


def _private_file(path: Path) -> IO[bytes]:
    """A new file only its owner can read or write (it must not exist)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with _private_file(tmp) as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_digest(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 else None
