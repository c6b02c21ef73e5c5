"""The lecture lab's sweep files (examples/lecture/*.yaml) stay valid sweeps: each passes the
checks POST /v1/sweeps makes (SweepSpec, check_space, the base and every checked value
resolved against the builtin dataset, check_objective), every grid combination gives a
valid job spec, and run_lab.py knows a claim for each file. No server, no torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from mlp_engine.data import builtin_info
from mlp_engine.spec import JobSpec, Limits, resolve_spec
from mlp_engine.sweep_spec import (
    SweepSpec,
    check_objective,
    check_space,
    grid_values,
    trial_spec,
    trial_target,
)

LAB = Path(__file__).resolve().parent.parent / "examples" / "lecture"
FILES = sorted(LAB.glob("*.yaml"))
MAX_LAB_TRIALS = 16  # the whole lab should run in a few minutes on a small machine


def _run_lab() -> ModuleType:
    found = importlib.util.spec_from_file_location("run_lab", LAB / "run_lab.py")
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    sys.modules["run_lab"] = module  # dataclasses look their module up by name
    found.loader.exec_module(module)
    return module


def test_there_are_five_sweep_files() -> None:
    assert len(FILES) == 5, [f.name for f in FILES]


def test_run_lab_has_a_claim_for_each_file() -> None:
    claims = _run_lab().CLAIMS
    assert sorted(c.key for c in claims) == [f.stem for f in FILES]
    assert all(c.path.exists() for c in claims)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_sweep_file_is_a_valid_sweep(path: Path) -> None:
    sweep = SweepSpec.model_validate(yaml.safe_load(path.read_text()))
    candidates = list(check_space(sweep))  # SpecError naming base or space.<path>

    base = JobSpec.model_validate(sweep.base)
    assert base.dataset.builtin is not None, "the lab runs on builtin datasets only"
    info = builtin_info(base.dataset.builtin, base.dataset.params)
    limits = Limits()
    resolved = resolve_spec(base, info, limits)
    assert resolved.task is not None
    check_objective(sweep, task=resolved.task,
                    validation=info.n_rows > 0 and resolved.training.validation_split > 0)
    for _, _, candidate in candidates:
        resolve_spec(candidate, info, limits)

    assert sweep.strategy == "grid"
    assert trial_target(sweep) <= MAX_LAB_TRIALS
    for values in grid_values(sweep):  # every trial, not only the values the route checks
        resolve_spec(JobSpec.model_validate(trial_spec(sweep, values)), info, limits)
