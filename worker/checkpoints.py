"""Checkpoints in the artifact store: where one goes (`checkpoint_key`), its bytes
(`encode_checkpoint`) and reading back the one a job resumes from (`read_checkpoint`)."""

from __future__ import annotations

import io
import re
from typing import Any

from store.artifacts import ArtifactError, ArtifactStore

from .errors import CheckpointUnreadable

__all__ = ["checkpoint_key", "encode_checkpoint", "read_checkpoint"]

# torch.load's messages run to paragraphs of advice; the job's error keeps the first words
_CAUSE_CHARS = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def checkpoint_key(job_id: str, *, attempt: int = 0, epoch: int = 0) -> str:
    """Where a checkpoint goes. A file is never overwritten: the job row names the one to
    resume from, and a worker that lost its lease (but has not noticed yet) must not
    change that file under the worker that took the job over."""
    return f"jobs/{job_id}/checkpoint-a{attempt}-e{epoch}.pt"


def encode_checkpoint(checkpoint: dict[str, Any]) -> bytes:
    """`TrainState.checkpoint()` as the bytes `read_checkpoint` reads back."""
    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def read_checkpoint(artifacts: ArtifactStore, key: str) -> dict[str, Any]:
    """The checkpoint under `key`, ready for `fit(..., resume=...)`.

    Raises CheckpointUnreadable naming the key and the cause when the file is missing,
    cannot be read, is not a torch file or is not a checkpoint of this engine.
    """
    import torch

    from mlp_engine.checkpoint import READABLE_CHECKPOINT_FORMATS

    try:
        blob = artifacts.get_bytes(key)
    except (ArtifactError, OSError) as exc:
        raise CheckpointUnreadable(key, f"the file cannot be read from the artifact store "
                                        f"({_first_words(exc)})") from exc
    try:
        checkpoint = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:
        # torch's unpickler, fed damaged bytes, raises whatever it trips over first
        # (UnpicklingError, RuntimeError, EOFError, UnicodeDecodeError, IndexError,
        # struct.error, KeyError, ...): every one means the same here, and is translated
        raise CheckpointUnreadable(key, f"the file ({len(blob)} bytes) is not a torch "
                                        f"checkpoint ({_first_words(exc)})") from exc
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found not in READABLE_CHECKPOINT_FORMATS:
        what = f"format {found!r}" if isinstance(checkpoint, dict) else \
            f"a {type(checkpoint).__name__}, not a dict"
        readable = ", ".join(repr(f) for f in READABLE_CHECKPOINT_FORMATS)
        raise CheckpointUnreadable(key, f"not a checkpoint of this engine ({what}; it reads "
                                        f"{readable})")
    return checkpoint


def _first_words(exc: BaseException) -> str:
    # one line, no terminal escapes (torch bolds parts of its advice)
    text = " ".join(_ANSI.sub("", str(exc)).split())
    if len(text) > _CAUSE_CHARS:
        text = text[:_CAUSE_CHARS].rstrip() + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
