"""The CUDA path, on a machine with a GPU (`pytest -m cuda`; skipped without CUDA, and CI has
none): training on the GPU is reproducible, agrees with the CPU, never syncs per batch,
and its checkpoints and weights move between CPU and GPU workers.

Self-contained (no fixtures of the conftests), so `benchmarks/gpu.py` can run it with
`pytest --noconftest` on a GPU machine that has only torch and the engine's dependencies.
"""

from __future__ import annotations

import pytest
import torch

from mlp_engine.callbacks import Callback
from mlp_engine.training import fit
from mlp_engine.weights import load_model, save_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SPEC = {"dataset": {"builtin": "digits"}, "model": {"hidden_dims": [128, 128]},
        "training": {"epochs": 4, "batch_size": 64, "seed": 3}}


def _weights(result) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {k: v.detach().cpu() for k, v in result.model.state_dict().items()}


def test_a_gpu_run_is_reproducible_and_close_to_the_cpu_run() -> None:
    a = fit(SPEC, device="cuda")
    b = fit(SPEC, device="cuda")
    assert a.device.startswith("cuda")
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same GPU weights"
    cpu = fit(SPEC, device="cpu")
    # the same initial weights and data order: the first epoch's loss agrees closely
    assert a.history[0]["train_loss"] == pytest.approx(cpu.history[0]["train_loss"], rel=1e-4)
    assert abs(a.history[-1]["val_accuracy"] - cpu.history[-1]["val_accuracy"]) <= 0.02


def test_matmul_precision_is_full_float32() -> None:
    fit({**SPEC, "training": {**SPEC["training"], "epochs": 1}}, device="cuda")
    assert not torch.backends.cuda.matmul.allow_tf32  # reproducible by default


def test_no_host_sync_inside_an_epoch() -> None:
    """The hot loop never waits for the GPU: torch's sync debug mode raises on a sync."""

    class SyncCheck(Callback):
        """Errors on any synchronising call from after the first step to the last one."""

        batches = 0

        def on_batch_end(self, state):  # type: ignore[no-untyped-def]
            assert state.data is not None
            rows, bs = state.data.x_train.shape[0], state.spec.training.batch_size
            last = -(-rows // bs)
            if state.batch == 1:
                torch.cuda.set_sync_debug_mode("error")
            if state.batch == last:  # the epoch's .item() comes after this
                torch.cuda.set_sync_debug_mode("default")
            self.batches += 1

    check = SyncCheck()
    try:
        fit({**SPEC, "training": {**SPEC["training"], "epochs": 2}}, device="cuda",
            callbacks=[check])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert check.batches > 20


@pytest.mark.parametrize("first, second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_kind_of_worker(first: str, second: str) -> None:
    saved: dict = {}

    class StopAt2(Callback):
        def on_epoch_end(self, state, record):  # type: ignore[no-untyped-def]
            if record["epoch"] == 2:
                saved["ckpt"] = state.checkpoint()
                state.stop("moved to another worker")

    fit(SPEC, device=first, callbacks=[StopAt2()])
    resumed = fit(SPEC, device=second, resume=saved["ckpt"])
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    whole = fit(SPEC, device=second)
    assert resumed.history[-1]["val_accuracy"] == pytest.approx(
        whole.history[-1]["val_accuracy"], abs=0.02)


def test_weights_trained_on_the_gpu_load_and_predict_on_the_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlp_engine.inference import predict

    result = fit(SPEC, device="cuda")
    path = save_model(tmp_path / "w.safetensors", result)
    model = load_model(path)
    x = [[0.0] * 64, [16.0] * 64]
    cpu = predict(model, x)
    gpu = predict(load_model(path, device="cuda"), x)
    assert cpu["predictions"] == gpu["predictions"]
    assert torch.allclose(torch.tensor(cpu["probabilities"]), torch.tensor(gpu["probabilities"]),
                          atol=1e-5)
