"""The pure parts of sweeps: validation of the request, the strategies (grid, random, tpe
with Optuna, rebuilt from trial rows) and the early-stopping rules on hand-made records."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from mlp_engine.errors import SpecError
from mlp_engine.sweep_pruning import asha_prunes, is_rung, median_prunes, should_prune
from mlp_engine.sweep_spec import SweepSpec, check_objective, check_space, path_exists
from store.sweep_strategies import FinishedTrial, propose

BASE = {"dataset": {"builtin": "digits"}, "training": {"epochs": 3}}
OBJ = {"metric": "val_accuracy"}


def sweep(**kw):  # type: ignore[no-untyped-def]
    return SweepSpec.model_validate({"base": BASE, "objective": OBJ, **kw})


def test_paths_of_the_job_spec() -> None:
    for path in ("optimizer.lr", "model.hidden_dims", "model.activation",
                 "model.activation.negative_slope", "regularization.l2",
                 "training.batch_size", "optimizer.scheduler"):
        assert path_exists(path), path
    for path in ("optimizer.lrr", "model.width", "training.epochs.x", "", "model..dropout"):
        assert not path_exists(path), path


def test_unknown_path_and_bad_value_name_the_path_and_value() -> None:
    with pytest.raises(SpecError) as info:
        list(check_space(sweep(space={"model.widht": {"choice": [1, 2]}})))
    assert info.value.field == "space.model.widht"
    with pytest.raises(SpecError) as info:
        list(check_space(sweep(space={"model.dropout": {"uniform": [0.0, 1.5]}})))
    assert info.value.field == "space.model.dropout" and "1.5" in info.value.message
    with pytest.raises(SpecError) as info:
        list(check_space(sweep(space={"model.activation": {"choice": ["relu", "nope"]}})))
    assert "'nope'" in info.value.message
    with pytest.raises(SpecError) as info:
        list(check_space(sweep(space={"dataset.builtin": {"choice": ["iris"]}})))
    assert info.value.field == "space.dataset.builtin"


def test_request_rules() -> None:
    with pytest.raises(ValidationError, match="choice"):
        sweep(space={"optimizer.lr": {"uniform": [0.1, 0.2]}}, strategy="grid")
    with pytest.raises(ValidationError, match="6 combinations"):
        sweep(space={"model.activation": {"choice": ["relu", "tanh", "elu"]},
                     "model.dropout": {"choice": [0.0, 0.1]}}, strategy="grid", max_trials=4)
    with pytest.raises(ValidationError, match="below high"):
        sweep(space={"optimizer.lr": {"uniform": [0.2, 0.1]}})
    with pytest.raises(ValidationError, match="exactly one"):
        sweep(space={"optimizer.lr": {"uniform": [0.1, 0.2], "choice": [1]}})
    with pytest.raises(ValidationError, match="mode"):
        sweep(space={"optimizer.lr": {"uniform": [0.1, 0.2]}},
              objective={"metric": "val_loss", "mode": "max"})
    s = sweep(space={"optimizer.lr": {"uniform": [0.1, 0.2]}},
              objective={"metric": "val_r2"})
    with pytest.raises(SpecError, match="not computed for task classification"):
        check_objective(s, task="classification", validation=True)
    assert sweep(space={"model.activation": {"choice": ["relu", "tanh"]}},
                 strategy="grid").max_trials == 2


def test_grid_covers_every_combination_in_order() -> None:
    space = {"model.activation": {"choice": ["relu", "tanh", "elu"]},
             "model.hidden_dims": {"choice": [[8], [16, 16]]},
             "model.dropout": {"choice": [0.0, 0.2]}}
    s = sweep(space=space, strategy="grid")
    proposals = [propose(s, k) for k in range(12)]
    expected = [dict(zip(space, combo, strict=True)) for combo in itertools.product(
        *(e["choice"] for e in space.values()))]
    assert proposals == expected


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_same_seed_same_proposals_and_rebuild_gives_the_same_next(strategy: str) -> None:
    space = {"optimizer.lr": {"log_uniform": [1e-4, 0.1]},
             "model.hidden_dims": {"choice": [[8], [16, 16]]},
             "training.batch_size": {"int_uniform": [8, 64]}}

    def run(seed: int) -> list[dict]:
        s = sweep(space=space, strategy=strategy, seed=seed, max_trials=14)
        done: list[FinishedTrial] = []
        out = []
        for k in range(14):
            values = propose(s, k, done)
            out.append(values)
            state = "pruned" if k % 4 == 3 else "complete"
            done.append(FinishedTrial(k, values, state,  # type: ignore[arg-type]
                                      objective=None if state == "pruned"
                                      else values["optimizer.lr"] * 10,
                                      intermediate={1: 0.1}))
        return out

    a, b, c = run(0), run(0), run(1)
    assert a == b and a != c
    for values in a:
        assert 1e-4 <= values["optimizer.lr"] <= 0.1
        assert values["model.hidden_dims"] in ([8], [16, 16])
        assert isinstance(values["training.batch_size"], int)
    # a process that restarts rebuilds the study from the rows: the same next proposal
    s = sweep(space=space, strategy=strategy, seed=0, max_trials=14)
    rows = [FinishedTrial(k, v, "complete", objective=float(k)) for k, v in enumerate(a[:12])]
    assert propose(s, 12, rows) == propose(s, 12, list(reversed(rows)))


def test_random_trial_depends_on_seed_and_number_only() -> None:
    s = sweep(space={"optimizer.lr": {"uniform": [0.0, 1.0]}}, strategy="random")
    other = [FinishedTrial(0, {"optimizer.lr": 0.5}, "complete", objective=1.0)]
    assert propose(s, 3) == propose(s, 3, other)


def test_asha_rungs_and_decisions() -> None:
    assert [e for e in range(1, 30) if is_rung(e, 1, 3)] == [1, 3, 9, 27]
    assert [e for e in range(1, 30) if is_rung(e, 2, 2)] == [2, 4, 8, 16]
    # top 1/3 of 6 = 2 trials kept
    others = [0.9, 0.8, 0.5, 0.4, 0.3]
    assert not asha_prunes(0.95, others, mode="max", reduction_factor=3)
    assert not asha_prunes(0.85, others, mode="max", reduction_factor=3)
    assert asha_prunes(0.6, others, mode="max", reduction_factor=3)
    assert asha_prunes(0.6, [0.1, 0.2], mode="min", reduction_factor=3)
    assert asha_prunes(None, [0.5], mode="max", reduction_factor=2)
    # the best so far at a rung is never pruned, however few or many trials there are
    for n in range(0, 12):
        peers = [0.5 - 0.01 * i for i in range(n)]
        assert not asha_prunes(0.6, peers, mode="max", reduction_factor=3)
        assert not asha_prunes(0.4, [1 - p for p in peers], mode="min", reduction_factor=3)
    assert not should_prune(rule="asha", epoch=2, value=0.0, others=[1.0, 1.0],
                            mode="max", grace_epochs=1, reduction_factor=3)


def test_median_rule() -> None:
    assert median_prunes(0.5, [0.6, 0.7, 0.2], mode="max")
    assert not median_prunes(0.65, [0.6, 0.7, 0.2], mode="max")
    assert not median_prunes(0.1, [], mode="max")
    assert median_prunes(0.9, [0.1, 0.2], mode="min")
    assert not should_prune(rule="median", epoch=1, value=0.0, others=[1.0], mode="max",
                            grace_epochs=2, reduction_factor=3)
    assert should_prune(rule="median", epoch=2, value=0.0, others=[1.0], mode="max",
                        grace_epochs=2, reduction_factor=3)
