"""The artifact store: uploaded datasets, checkpoints and weights, by key.

A local directory by default, or any fsspec URL (`s3://bucket/prefix`, ...) so that workers
on other machines share it. Every write is atomic (a temporary name, then a rename), so a
reader never sees half a file, and returns the sha256 and size of what it wrote.

A remote store keeps local copies of what `local_path` fetched, in a cache directory that
only this user can write (created 0700; one that others could write is refused or made
again). Each copy's sha256 is recorded beside it as it is written and checked again
(recomputed) each time the copy is reused: a copy that is corrupt or was changed is fetched
again, never used.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["ArtifactStore", "ArtifactError", "sha256_file"]

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


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


def _check_key(key: str) -> str:
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ArtifactError(f"bad artifact key {key!r}")
    return key


class ArtifactStore:
    """Files under one root: a local directory path, `file://...` or any fsspec URL."""

    def __init__(self, url: str | Path, *, cache_dir: str | Path | None = None) -> None:
        import fsspec

        self.url = str(url)
        fs, root = fsspec.core.url_to_fs(self.url)
        self.fs = fs
        self.root = root.rstrip("/")
        self.is_local = "file" in _protocols(fs)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._cache_checked = False

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
        """Write the chunks under `key` atomically; return (bytes, sha256)."""
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
        return self.put_stream(key, [data])

    def put_file(self, key: str, local_path: str | Path) -> tuple[int, str]:
        def chunks() -> Iterable[bytes]:
            with open(local_path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        return self.put_stream(key, chunks())

    # ----------------------------------------------------------------- reads

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        if "r" not in mode:
            raise ArtifactError("artifacts are written with put_*; open() only reads")
        try:
            return self.fs.open(self._path(key), mode)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {key!r} not found") from None

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def local_path(self, key: str, *, sha256: str | None = None) -> Path:
        """A local file with the artifact's content: the file itself for a local store, a
        cached download (written atomically, by key) for a remote one. Meant for immutable
        artifacts such as uploaded datasets.

        A cached copy is reused only while its sha256 (recomputed) is `sha256` when the
        caller knows it (a dataset's or weights' recorded digest), else the one recorded
        when it was fetched; otherwise it is fetched again. A fetched file whose digest is
        not `sha256` raises ArtifactError."""
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
                return copy
            log.warning("cached copy of artifact %r does not match its sha256 (%s); "
                        "fetching it again", key,
                        "none recorded" if want is None else f"{have[:12]}... "
                        f"instead of {want[:12]}...")
        return self._fetch(key, copy, recorded, sha256)

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
            digest = h.hexdigest()
            if sha256 is not None and not hmac.compare_digest(digest, sha256):
                raise ArtifactError(f"artifact {key!r} in the store has sha256 {digest}, "
                                    f"not the {sha256} recorded for it")
            _write_atomically(recorded, (digest + "\n").encode())
            os.replace(tmp, copy)
        finally:
            tmp.unlink(missing_ok=True)
        return copy

    def _cache_root(self) -> Path:
        """The cache directory, made sure of once: ours, not a link, and writable by no
        one else (a directory that others could write is emptied and made again; one we
        do not own is refused)."""
        if self._cache_dir is None:
            tag = hashlib.sha256(self.url.encode()).hexdigest()[:16]
            # per user: another user's directory of the same name is never ours to use
            self._cache_dir = Path(tempfile.gettempdir()) / f"mlp-artifacts-{os.getuid()}-{tag}"
        if not self._cache_checked:
            _make_private_dir(self._cache_dir)
            self._cache_checked = True
        return self._cache_dir

    # ----------------------------------------------------------------- deletes

    def delete(self, key: str) -> None:
        self._remove_quietly(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every artifact under `prefix` (for example `jobs/<id>/`)."""
        path = self._path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        if self._cache_dir is not None:
            for tree in ("files", "sha256"):
                shutil.rmtree(self._cache_dir / tree / _check_key(prefix), ignore_errors=True)

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
