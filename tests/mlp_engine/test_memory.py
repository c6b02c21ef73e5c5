"""The memory estimate: its parts against torch, the issue's specs, and measured peaks."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from benchmarks.memory_estimate import GRID, measure_grid, pathological
from mlp_engine import diagnostics, losses, metrics
from mlp_engine import memory as mem
from mlp_engine.data import builtin_info
from mlp_engine.memory import MemoryEstimate, estimate_from_info, estimate_training_memory
from mlp_engine.model import build_model
from mlp_engine.registry import ACTIVATIONS, LOSSES
from mlp_engine.spec import DatasetInfo, JobSpec, resolve_spec

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30


def _moons(n: int = 1000, **fields: object) -> JobSpec:
    spec = JobSpec.model_validate({"dataset": {"builtin": "moons", "params": {"n_samples": n}},
                                   "task": "classification", **fields})
    return resolve_spec(spec, builtin_info("moons", {"n_samples": n}))


def _estimate(n: int = 1000, **fields: object) -> MemoryEstimate:
    return estimate_training_memory(_moons(n, **fields), n_rows=n)


# --------------------------------------------------------------------------- the model's parts


def test_mirrored_constants_agree_with_the_engine() -> None:
    assert mem.MAX_PAIRS == losses.MAX_PAIRS
    assert mem.EVAL_CHUNK == metrics._CHUNK
    assert mem.SAMPLE_ROWS == diagnostics.SAMPLE_ROWS
    assert mem.CHUNK_VALUES == diagnostics.CHUNK_VALUES


def test_the_module_imports_no_torch() -> None:
    code = ("import sys, mlp_engine.memory, mlp_engine.spec; "
            "sys.exit('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, "importing mlp_engine.memory imported torch"


def _saved_floats(spec: JobSpec, rows: int) -> int:
    """Floats the autograd graph of one forward pass keeps for backward (distinct storages)."""
    model = build_model(spec).train()
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(rows, spec.model.input_dim or 0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(kept.values()) // 4


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("batch_norm", "dropout"), [(False, 0.0), (True, 0.0), (False, 0.5),
                                                     (True, 0.5)])
def test_saved_activations_per_layer_match_autograd(activation: str, batch_norm: bool,
                                                    dropout: float) -> None:
    rows, width, depth = 512, 96, 3
    spec = JobSpec.model_validate({
        "dataset": {"builtin": "iris"}, "task": "regression",
        "model": {"hidden_dims": [width] * depth, "activation": activation,
                  "batch_norm": batch_norm, "dropout": dropout, "input_dim": 8,
                  "output_dim": 1}})
    # the weights of every Linear but the first, whose input needs no gradient
    weights = (depth - 1) * width * width + width
    # BatchNorm: weight, running and batch statistics: (h,) each, small
    bn = 5 * width * depth if batch_norm else 0
    hidden = _saved_floats(spec, rows) - rows * 8 - weights
    assert mem._saved_per_layer(spec) == round(hidden / (rows * width * depth))
    assert 0 <= hidden - mem._saved_per_layer(spec) * rows * width * depth <= bn + 4 * width


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_has_its_buffers_counted(loss: str) -> None:
    if loss != "hinge_embedding":
        assert loss in mem._LOSS_BUFFERS and loss in mem._EVAL_BUFFERS


def test_optimizer_state_per_optimiser() -> None:
    params = _estimate(optimizer="sgd").breakdown["parameters"]
    state = {name: _estimate(optimizer=opt).breakdown["optimizer_state"] for name, opt in [
        ("sgd", "sgd"), ("momentum", {"name": "sgd", "momentum": 0.9}), ("adam", "adam"),
        ("adamw", "adamw"), ("rmsprop", "rmsprop"),
        ("rmsprop_momentum", {"name": "rmsprop", "momentum": 0.9})]}
    assert state == {"sgd": 0, "momentum": params, "adam": 2 * params, "adamw": 2 * params,
                     "rmsprop": params, "rmsprop_momentum": 2 * params}


def test_terms_follow_the_spec() -> None:
    base = _estimate(model={"hidden_dims": [256, 256]})
    assert base.breakdown["best_weights"] == 0
    es = _estimate(model={"hidden_dims": [256, 256]}, training={"early_stopping": {}})
    assert es.breakdown["best_weights"] == base.breakdown["parameters"]
    no_ckpt = estimate_training_memory(_moons(model={"hidden_dims": [256, 256]}), n_rows=1000,
                                       checkpoints=False)
    assert no_ckpt.breakdown["checkpoint"] == 0 < base.breakdown["checkpoint"]
    # a wider batch, batch norm and dropout each keep more for backward
    acts = base.breakdown["activations"]
    assert _estimate(model={"hidden_dims": [256, 256]}, training={"batch_size": 256}
                     ).breakdown["activations"] > acts
    assert _estimate(model={"hidden_dims": [256, 256], "batch_norm": True,
                            "dropout": 0.1}).breakdown["activations"] > 2 * acts
    # diagnostics cost only when asked for: by the spec, or by the findings rules that read
    # activation statistics (on by default)
    rules_off = {name: False for name in
                 ("poor_initialization", "dead_units", "saturated_activations")}
    quiet = _estimate(model={"hidden_dims": [256, 256]}, diagnostics={"rules": rules_off})
    assert quiet.breakdown["diagnostics"] == 0
    stats = _estimate(model={"hidden_dims": [256, 256]},
                      diagnostics={"activation_stats": True, "rules": rules_off})
    assert base.breakdown["diagnostics"] == stats.breakdown["diagnostics"] > 0
    # the total is the peak phase plus the fixed overhead, the phase its alive terms
    assert base.total_bytes == base.phases[base.peak_phase] + mem.FIXED_OVERHEAD_BYTES
    alive = sum(base.breakdown[t] for t in mem.PHASES[base.peak_phase])
    assert base.phases[base.peak_phase] == alive + base.breakdown["allocator_slack"]


def test_data_terms_scale_with_rows_and_source() -> None:
    spec = JobSpec.model_validate({"dataset": {"id": "t"}, "task": "classification"})
    info = DatasetInfo(n_rows=1_000_000, n_features=100, n_classes=2, class_labels=(0, 1))
    est = estimate_training_memory(resolve_spec(spec, info), n_rows=info.n_rows)
    assert est == estimate_from_info(resolve_spec(spec, info), info)
    cells = 4 * 10**8
    assert est.breakdown["data_source"] >= cells  # the worker's float32 arrays
    assert est.breakdown["data_tensors"] >= cells
    # the float64 standardiser's copy and deviations of the training rows
    assert est.breakdown["prepare_copies"] >= 2 * cells + 2 * 8 * 800_000 * 100
    assert est.peak_phase == "prepare"
    strings = estimate_training_memory(resolve_spec(spec, info), n_rows=info.n_rows,
                                       string_labels=True)
    assert strings.breakdown["data_source"] > est.breakdown["data_source"]


def test_an_unresolved_spec_is_refused() -> None:
    spec = JobSpec.model_validate({"dataset": {"builtin": "moons"}})
    with pytest.raises(ValueError, match="resolve_spec"):
        estimate_training_memory(spec, n_rows=1000)


# --------------------------------------------------------------------------- the issue's specs


def test_the_issues_specs_are_estimated_in_tens_and_hundreds_of_gigabytes() -> None:
    tracemalloc.start()
    try:
        found = dict(pathological())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, "estimating must not allocate what it estimates"
    hinge, deep, labels = found.values()
    # metric learning on iris with a 1,000,000-d embedding: 2016 pairs x 1e6 x 4 bytes each
    # for several pair buffers (the worker grew past 21 GB before it was stopped)
    assert hinge.peak_phase == "train_step" and 22 * GiB < hinge.total_bytes < 64 * GiB
    assert hinge.largest_terms(1)[0][0] == "loss_buffers"
    # 64 layers of 559 with batch norm and dropout at batch 65,536: ~0.6 MB a row
    assert 30 * GiB < deep.total_bytes < 60 * GiB
    assert deep.largest_terms(1)[0][0] == "activations"
    # a million classes: one (65,536, 1e6) float32 tensor of logits alone is 262 GB
    assert labels.phases["train_step"] > 4 * 262e9
    assert labels.total_bytes < 10 * 2**40
    assert "GiB" in hinge.summary() or "TiB" in hinge.summary()


# --------------------------------------------------------------------------- measured


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="measures the peak through /proc/self (Linux)")
def test_estimates_are_within_minus_10_plus_30_percent_of_measured_peaks() -> None:
    assert len(GRID) >= 8
    results = measure_grid(GRID, jobs=2)
    report = []
    for shape, measured in results:
        estimate = shape.estimate().total_bytes
        report.append(f"{shape.name}: estimate {estimate / 2**20:.0f} MiB, measured "
                      f"{measured / 2**20:.0f} MiB, ratio {estimate / measured:.2f}")
        assert 100 * 2**20 <= measured <= 2 * GiB, report[-1]
    bad = [line for line, (shape, measured) in zip(report, results, strict=True)
           if not 0.9 <= shape.estimate().total_bytes / measured <= 1.3]
    assert not bad, "\n".join(["outside [-10 %, +30 %]:", *bad, "all:", *report])
