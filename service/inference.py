"""Predictions for the API: a small LRU cache of loaded models keyed by job id and weights
sha256, and the call into `mlp_engine.inference.predict`. torch is imported here, lazily,
on the first prediction, so the API process starts without it. Call from a worker thread,
never from the event loop."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["ModelCache"]


class ModelCache:
    """At most `size` loaded models; loading and prediction are serialised per model only
    where torch needs it (a module in eval mode is safe to call from several threads)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, sha256: str, path: str) -> Any:
        key = (job_id, sha256)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        from mlp_engine.weights import load_model

        model = load_model(path)
        if self.size > 0:
            with self._lock:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
        return model

    def forget(self, job_id: str) -> None:
        with self._lock:
            for key in [k for k in self._models if k[0] == job_id]:
                del self._models[key]

    def predict(self, *, job_id: str, sha256: str, path: str,
                x: list[list[float]], top_k: int | None = None) -> dict[str, Any]:
        """`{"predictions": [...], "probabilities": [[...]] | None}`; raises
        `mlp_engine.errors.DataError` (field `x`) for rows of the wrong width."""
        from mlp_engine.inference import predict

        model = self.get(job_id, sha256, path)
        return predict(model, x, top_k=top_k)
