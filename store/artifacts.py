"""The artifact store: uploaded datasets, checkpoints and weights, by key.

A local directory by default, or any fsspec URL (`s3://bucket/prefix`, ...) so that workers
on other machines share it. Every write is atomic (a temporary name, then a rename), so a
reader never sees half a file, and returns the sha256 and size of what it wrote.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["ArtifactStore", "ArtifactError", "sha256_file"]

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

    def local_path(self, key: str) -> Path:
        """A local file with the artifact's content: the file itself for a local store, a
        cached download (written atomically, by key) for a remote one. Meant for immutable
        artifacts such as uploaded datasets."""
        if self.is_local:
            path = Path(self._path(key))
            if not path.exists():
                raise ArtifactError(f"artifact {key!r} not found")
            return path
        cache = self._cache_root() / _check_key(key)
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.tmp-{uuid.uuid4().hex}")
            try:
                with self.open(key) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, cache)
            finally:
                tmp.unlink(missing_ok=True)
        return cache

    def _cache_root(self) -> Path:
        if self._cache_dir is None:
            tag = hashlib.sha256(self.url.encode()).hexdigest()[:16]
            self._cache_dir = Path(tempfile.gettempdir()) / f"mlp-artifacts-{tag}"
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
            shutil.rmtree(self._cache_dir / _check_key(prefix), ignore_errors=True)

    def _remove_quietly(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except (FileNotFoundError, OSError):
            pass


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
