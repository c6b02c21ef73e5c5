"""Streaming multipart uploads: the file part goes to a temporary file under the data
directory in chunks, counted and hashed on the way, so an upload over the limit is refused
(413) without the body ever being held in memory.

Everything else a client can send is bounded as it arrives, not at the end: only the form
fields the route reads (`FORM_FIELDS`), each once and at most `_MAX_FIELD_BYTES`, at most
`_MAX_PARTS` parts, and at most `_MAX_HEADER_BYTES` of part headers each."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from .errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType

__all__ = ["ReceivedUpload", "receive_multipart", "UPLOAD_FORMATS", "format_of"]

UPLOAD_FORMATS = {"csv": "csv", "npz": "npz", "parquet": "parquet", "pq": "parquet"}
_FLUSH_BYTES = 1 << 20
_MAX_FIELD_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 16 * 1024  # of one part's headers
FORM_FIELDS = ("name", "target", "format")  # besides the part `file`
_MAX_PARTS = len(FORM_FIELDS) + 1
_MULTIPART_SLACK = 64 * 1024  # headers, boundaries and form fields around the file


def format_of(given: str | None, filename: str | None) -> str:
    """The upload format: the `format` field if given, else the file name's extension."""
    if given:
        fmt = UPLOAD_FORMATS.get(given.strip().lower().lstrip("."))
        if fmt is None:
            raise UnsupportedMediaType(
                f"format '{given}' is not supported; use one of csv, npz, parquet")
        return fmt
    suffix = Path(filename or "").suffix.lower().lstrip(".")
    fmt = UPLOAD_FORMATS.get(suffix)
    if fmt is None:
        raise UnsupportedMediaType(
            f"cannot tell the format of '{filename or 'the file'}' from its name; name it "
            "*.csv, *.npz or *.parquet, or give the form field 'format' (csv, npz, parquet)")
    return fmt


@dataclass
class ReceivedUpload:
    """The form fields and the file of one multipart request."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    nbytes: int = 0
    sha256: str = ""

    def cleanup(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Receiver:
    def __init__(self, directory: Path, max_file_bytes: int) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.result = ReceivedUpload()
        self._hash = hashlib.sha256()
        self._fh: IO[bytes] | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._part_name: str | None = None
        self._part_is_file = False
        self._part_data = bytearray()
        self._files = 0
        self._parts = 0
        self._header_bytes = 0
        self.error: Exception | None = None

    # parser callbacks (plain functions: they only move bytes between buffers)
    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise InvalidInput(f"the upload has more than {_MAX_PARTS} parts; send the part "
                               f"'file' and at most the fields {', '.join(FORM_FIELDS)}",
                               field="multipart")
        self._header_bytes = 0
        self._disposition = b""
        self._part_name = None
        self._part_is_file = False
        self._part_data = bytearray()

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise PayloadTooLarge(f"the headers of a multipart part are over "
                                  f"{_MAX_HEADER_BYTES} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise BadRequest("a multipart part has no name in its Content-Disposition header")
        self._part_name = name.decode("utf-8", "replace")
        if b"filename" in options:
            if self._part_name != "file":
                raise InvalidInput(f"unexpected file part '{self._part_name}'; send the data "
                                   "as the part named 'file'", field=self._part_name)
            self._files += 1
            if self._files > 1:
                raise InvalidInput("send exactly one file, as the part named 'file'",
                                   field="file")
            self._part_is_file = True
            self.result.filename = options[b"filename"].decode("utf-8", "replace")
        elif self._part_name not in FORM_FIELDS:
            raise InvalidInput(f"unexpected form field '{self._part_name[:100]}'; the upload "
                               f"takes the part 'file' and the fields {', '.join(FORM_FIELDS)}",
                               field=self._part_name[:100])
        elif self._part_name in self.result.fields:
            raise InvalidInput(f"form field '{self._part_name}' is given twice",
                               field=self._part_name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part_is_file:
            self.result.nbytes += len(chunk)
            if self.result.nbytes > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"the upload is over the limit max_upload_bytes={self.max_file_bytes} "
                    "(MLP_MAX_UPLOAD_BYTES)")
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
        else:
            if len(self._part_data) + len(chunk) > _MAX_FIELD_BYTES:
                raise PayloadTooLarge(f"form field '{self._part_name}' is over "
                                      f"{_MAX_FIELD_BYTES} bytes")
            self._part_data.extend(chunk)

    def on_part_end(self) -> None:
        if not self._part_is_file and self._part_name is not None:
            self.result.fields[self._part_name] = self._part_data.decode("utf-8", "replace")

    # file writing, off the event loop
    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # the pid in the name lets a restarted API remove what a killed one left
        path = self.directory / f"upload-{os.getpid()}-{uuid.uuid4().hex}.part"
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self.result.path = path

    def _write(self, chunks: list[bytes]) -> None:
        if self._fh is None:
            self._open()
        assert self._fh is not None
        for chunk in chunks:
            self._hash.update(chunk)
            self._fh.write(chunk)

    async def flush(self, *, force: bool = False) -> None:
        if self._pending and (force or self._pending_bytes >= _FLUSH_BYTES):
            chunks, self._pending, self._pending_bytes = self._pending, [], 0
            await anyio.to_thread.run_sync(self._write, chunks)

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def finish(self) -> ReceivedUpload:
        await self.flush(force=True)
        if self._files and self._fh is None:  # an empty file part
            await anyio.to_thread.run_sync(self._open)
        await anyio.to_thread.run_sync(self._close)
        self.result.sha256 = self._hash.hexdigest()
        return self.result

    async def abort(self) -> None:
        await anyio.to_thread.run_sync(self._close)
        self.result.cleanup()


async def receive_multipart(request: Request, *, directory: Path,
                            max_file_bytes: int) -> ReceivedUpload:
    """Read a multipart/form-data request: form fields into memory (small), the part named
    `file` into a temporary file under `directory`. Raises 413 as soon as the file passes
    `max_file_bytes` (or at once when Content-Length says it will)."""
    content_type = request.headers.get("content-type", "")
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send the dataset as multipart/form-data with the file in the part 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart Content-Type has no boundary")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and \
            int(length) > max_file_bytes + _MULTIPART_SLACK:
        raise PayloadTooLarge(
            f"the request has {int(length)} bytes, over the limit max_upload_bytes="
            f"{max_file_bytes} (MLP_MAX_UPLOAD_BYTES)")

    receiver = _Receiver(directory, max_file_bytes)
    callbacks: Any = {
        "on_part_begin": receiver.on_part_begin,
        "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end,
        "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value,
        "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await receiver.flush()
        parser.finalize()
        result = await receiver.finish()
    except FormParserError as exc:
        await receiver.abort()
        raise BadRequest(f"the multipart body is malformed: {exc}") from exc
    except BaseException:
        await receiver.abort()
        raise
    if result.path is None:
        raise InvalidInput("the upload has no file; send it as the multipart part 'file'",
                           field="file")
    return result
