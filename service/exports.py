"""The ONNX export of a job's weights (SPEC 12), made on its first request and then kept in
the artifact store beside the safetensors file: `jobs/<id>/weights.onnx`, with its sha256
(the download's ETag) in `jobs/<id>/weights.onnx.sha256`, written after it.

torch is imported here, lazily, on the first export, so the API process starts without it.
Call from a worker thread, never from the event loop. Two API processes that export the same
job at once write the same bytes (the export is deterministic), so either write may win.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path

from store.artifacts import ArtifactStore

from .busy import BusyGate

__all__ = ["onnx_available", "onnx_export", "onnx_key"]

# what torch.onnx.export needs (the `server` extra brings them)
_EXPORTER_PACKAGES = ("onnxscript", "onnx")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# one export at a time in this process; a request that finds one under way is answered 503
# with Retry-After at once, so exports never hold the threads other requests need
RETRY_AFTER_S = 5
_EXPORTS = BusyGate(1, busy_message="an ONNX export is under way in this API process; retry "
                                    "in a few seconds", retry_after_s=RETRY_AFTER_S)


def onnx_available() -> bool:
    """Whether this process can export ONNX (without importing anything)."""
    return all(importlib.util.find_spec(name) is not None for name in _EXPORTER_PACKAGES)


def onnx_key(job_id: str) -> str:
    return f"jobs/{job_id}/weights.onnx"


def _recorded(artifacts: ArtifactStore, key: str) -> str | None:
    """The sha256 recorded for an export that is in the store, else None."""
    sidecar = f"{key}.sha256"
    if not (artifacts.exists(sidecar) and artifacts.exists(key)):
        return None
    sha = artifacts.get_bytes(sidecar).decode("ascii", "replace").strip()
    return sha if _SHA256.fullmatch(sha) else None


def onnx_export(artifacts: ArtifactStore, *, job_id: str, weights_key: str,
                weights_sha256: str | None) -> tuple[str, str]:
    """(key, sha256) of the job's ONNX export, exported from its weights file now if the
    store has none yet. Raises `mlp_engine.errors.WeightsError` when the export fails and
    `store.artifacts.ArtifactError` when the weights file is gone."""
    key = onnx_key(job_id)
    sha = _recorded(artifacts, key)
    if sha is not None:
        return key, sha
    with _EXPORTS.hold():
        sha = _recorded(artifacts, key)  # exported while this request waited
        if sha is not None:
            return key, sha
        from mlp_engine.onnx_export import export_onnx
        from mlp_engine.weights import load_model

        weights = artifacts.local_path(weights_key, sha256=weights_sha256)
        with tempfile.TemporaryDirectory(prefix="mlp-onnx-") as tmp:
            path = export_onnx(load_model(weights), Path(tmp) / "weights.onnx")
            _, sha = artifacts.put_file(key, path)
        artifacts.put_bytes(f"{key}.sha256", f"{sha}\n".encode())
    return key, sha
