"""The lecture's formulas against hand counts and against real torch modules."""

from __future__ import annotations

import itertools
import math
import sys
import time

import pytest
from torch import nn

from mlp_engine.theory import (
    PARAMETER_COUNT_FORMULA,
    exact_parameter_count,
    linear_region_bounds,
    montufar_applies,
    montufar_lower_bound,
    parameter_count_formula,
    parameter_count_formula_text,
    single_layer_regions,
)


def _torch_mlp(
    input_dim: int, hidden_dims: list[int], output_dim: int, *, batch_norm: bool = False
) -> nn.Sequential:
    layers: list[nn.Module] = []
    widths = [input_dim, *hidden_dims]
    for a, b in zip(widths, widths[1:], strict=False):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(widths[-1], output_dim))
    return nn.Sequential(*layers)


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- parameter counts -------------------------------------------------------------------

UNIFORM_CASES = [
    (n0, n, big_l, k)
    for n0, n, big_l, k in itertools.product(
        [1, 2, 4, 64, 784], [1, 3, 16, 128], [0, 1, 2, 3, 7], [1, 2, 10]
    )
]


@pytest.mark.parametrize(("n0", "n", "big_l", "k"), UNIFORM_CASES)
def test_formula_equals_exact_count(n0: int, n: int, big_l: int, k: int) -> None:
    formula = parameter_count_formula(n0, n, big_l, k)
    assert type(formula) is int
    assert formula == exact_parameter_count(n0, [n] * big_l, k)


@pytest.mark.parametrize(
    ("n0", "n", "big_l", "k"),
    [
        (1, 1, 0, 1),
        (4, 8, 1, 3),
        (64, 128, 2, 10),
        (13, 5, 4, 3),
        (784, 256, 3, 10),
        (2, 1, 6, 1),
    ],
)
def test_formula_equals_torch_numel(n0: int, n: int, big_l: int, k: int) -> None:
    model = _torch_mlp(n0, [n] * big_l, k)
    assert parameter_count_formula(n0, n, big_l, k) == _numel(model)


@pytest.mark.parametrize(
    ("n0", "hidden", "k"),
    [
        (64, [128, 128], 10),
        (4, [3], 3),
        (10, [1, 7, 2], 1),
        (30, [50, 20, 10, 5], 2),
    ],
)
def test_exact_count_equals_torch_numel(n0: int, hidden: list[int], k: int) -> None:
    assert exact_parameter_count(n0, hidden, k) == _numel(_torch_mlp(n0, hidden, k))


@pytest.mark.parametrize(
    ("n0", "hidden", "k"),
    [
        (64, [128, 128], 10),
        (4, [3], 3),
        (10, [1, 7, 2], 1),
    ],
)
def test_batch_norm_adds_two_per_hidden_unit(n0: int, hidden: list[int], k: int) -> None:
    with_bn = exact_parameter_count(n0, hidden, k, batch_norm=True)
    assert with_bn == exact_parameter_count(n0, hidden, k) + 2 * sum(hidden)
    assert with_bn == _numel(_torch_mlp(n0, hidden, k, batch_norm=True))


def test_formula_by_hand() -> None:
    # 64-128-128-10: 65*128 + 129*128 + 129*10
    assert parameter_count_formula(64, 128, 2, 10) == 8320 + 16512 + 1290 == 26122
    # L = 0 is a single Linear layer; the width does not enter (the service passes 0).
    assert parameter_count_formula(4, 99, 0, 3) == 15
    assert parameter_count_formula(4, 0, 0, 3) == 15


def test_formula_text() -> None:
    assert PARAMETER_COUNT_FORMULA == "(n0+1)*n + (L-1)*(n+1)*n + (n+1)*k"
    assert parameter_count_formula_text() == PARAMETER_COUNT_FORMULA
    assert parameter_count_formula_text(3) == PARAMETER_COUNT_FORMULA
    assert parameter_count_formula_text(0) == "(n0+1)*k"
    # The text, evaluated, is the formula.
    for n0, n, big_l, k in [(3, 5, 2, 4), (64, 128, 3, 10)]:
        env = {"n0": n0, "n": n, "L": big_l, "k": k}
        assert eval(PARAMETER_COUNT_FORMULA, {}, env) == parameter_count_formula(n0, n, big_l, k)


@pytest.mark.parametrize(
    "bad", [(0, 4, 1, 2), (3, 0, 1, 2), (3, 4, -1, 2), (3, 4, 1, 0), (3, 4.0, 1, 2)]
)
def test_formula_refuses_bad_sizes(bad: tuple) -> None:
    with pytest.raises(ValueError):
        parameter_count_formula(*bad)


# --- one hidden layer -------------------------------------------------------------------


@pytest.mark.parametrize("n1", [1, 2, 5, 100])
def test_single_layer_on_a_line(n1: int) -> None:
    # n1 distinct points cut the line into n1 + 1 pieces.
    assert single_layer_regions(1, n1) == n1 + 1


def test_single_layer_by_hand() -> None:
    assert single_layer_regions(2, 3) == 7  # three lines in general position
    assert single_layer_regions(2, 4) == 11  # 1 + 4 + 6
    assert single_layer_regions(3, 4) == 15  # 1 + 4 + 6 + 4
    assert single_layer_regions(3, 5) == 26  # 1 + 5 + 10 + 10


@pytest.mark.parametrize(("n0", "n1"), [(1, 1), (2, 1), (2, 2), (5, 3), (10, 10), (64, 20)])
def test_single_layer_few_units_is_every_pattern(n0: int, n1: int) -> None:
    assert single_layer_regions(n0, n1) == 2**n1


def test_single_layer_equals_binomial_sum() -> None:
    for n0, n1 in itertools.product(range(1, 13), range(1, 40)):
        expected = sum(math.comb(n1, j) for j in range(n0 + 1))
        assert single_layer_regions(n0, n1) == expected


def test_single_layer_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError):
        single_layer_regions(0, 3)
    with pytest.raises(ValueError):
        single_layer_regions(2, 0)


# --- Montúfar et al. --------------------------------------------------------------------


def test_montufar_by_hand() -> None:
    # n0 = 1: each layer of n folds the line n times; the last layer cuts each copy n_L+1 ways.
    assert montufar_lower_bound(1, [3, 3]) == 3 * 4
    assert montufar_lower_bound(1, [2, 3, 4]) == 2 * 3 * 5
    # n0 = 2, widths 4, 4, 3: ⌊4/2⌋^2 · ⌊4/2⌋^2 · (1 + 3 + 3)
    assert montufar_lower_bound(2, [4, 4, 3]) == 4 * 4 * 7
    # n0 = 2, widths 5, 6: ⌊5/2⌋^2 · (1 + 6 + 15)
    assert montufar_lower_bound(2, [5, 6]) == 4 * 22
    # n0 = 3, widths 7, 3: ⌊7/3⌋^3 · 2^3
    assert montufar_lower_bound(3, [7, 3]) == 8 * 8
    # widths equal to n0: every factor is 1, the last layer gives 2^n0.
    assert montufar_lower_bound(4, [4, 4, 4]) == 16


@pytest.mark.parametrize(("n0", "n1"), [(1, 1), (2, 3), (3, 7), (64, 128)])
def test_montufar_one_layer_is_single_layer(n0: int, n1: int) -> None:
    assert montufar_lower_bound(n0, [n1]) == single_layer_regions(n0, n1)


def test_montufar_no_hidden_layer_is_one_region() -> None:
    assert montufar_lower_bound(5, []) == 1


def test_montufar_fallback_below_n0_uses_effective_dimension() -> None:
    assert not montufar_applies(4, [8, 2, 8])
    # d = min(4, 8, 2, 8) = 2: ⌊8/2⌋^2 · ⌊2/2⌋^2 · Σ_{j≤2} C(8, j)
    assert montufar_lower_bound(4, [8, 2, 8]) == 16 * 1 * (1 + 8 + 28)
    # A narrow last layer: d = 3, ⌊10/3⌋^3 · 2^3.
    assert montufar_lower_bound(5, [10, 3]) == 27 * 8
    # One narrow layer: all 2^n1 activation patterns, which is the exact maximum.
    assert montufar_lower_bound(10, [4]) == single_layer_regions(10, 4) == 16


def test_montufar_grows_with_depth() -> None:
    shallow = montufar_lower_bound(2, [8])
    deep = montufar_lower_bound(2, [8, 8, 8])
    assert deep == 16 * 16 * shallow


def test_montufar_results_are_ints() -> None:
    for n0, hidden in [(1, [3]), (2, [100] * 50), (3, [2, 9])]:
        assert type(montufar_lower_bound(n0, hidden)) is int
        assert type(single_layer_regions(n0, hidden[-1])) is int


# --- the API's dictionary ---------------------------------------------------------------


def test_bounds_for_one_hidden_layer() -> None:
    bounds = linear_region_bounds(2, [3])
    assert bounds == {
        "lower_bound": "7",
        "log10": pytest.approx(math.log10(7), rel=1e-12),
        "single_layer_upper": "7",
        "theorem": "Montúfar et al. 2014",
        "applies": True,
    }


def test_bounds_for_deep_net() -> None:
    bounds = linear_region_bounds(2, [4, 4, 3])
    assert bounds["lower_bound"] == "112"
    assert bounds["single_layer_upper"] is None
    assert bounds["applies"] is True
    assert isinstance(bounds["log10"], float)


def test_bounds_say_when_theorem_does_not_apply() -> None:
    bounds = linear_region_bounds(64, [128, 32, 128])
    assert bounds["applies"] is False
    assert bounds["lower_bound"] == str(montufar_lower_bound(64, [128, 32, 128]))


def test_huge_bound_log10_and_digits() -> None:
    n0, hidden = 2, [100] * 50
    bounds = linear_region_bounds(n0, hidden)
    expected_log10 = 49 * n0 * math.log10(50) + math.log10(1 + 100 + 4950)
    assert bounds["log10"] == pytest.approx(expected_log10, rel=1e-9)
    value = montufar_lower_bound(n0, hidden)
    assert value == 50**98 * 5051
    assert bounds["lower_bound"] == str(value)
    assert len(bounds["lower_bound"]) == math.floor(expected_log10) + 1


def test_bound_past_python_str_digit_limit() -> None:
    # ⌊4096/64⌋^64 per layer: about 115.6 digits each, well past 4300 digits in all, which
    # plain str(int) refuses under Python's default int_max_str_digits.
    n0, hidden = 64, [4096] * 64
    bounds = linear_region_bounds(n0, hidden)
    expected_log10 = 63 * 64 * math.log10(64) + math.log10(
        sum(math.comb(4096, j) for j in range(65))
    )
    assert bounds["log10"] == pytest.approx(expected_log10, rel=1e-9)
    digits = bounds["lower_bound"]
    assert digits.isdigit() and len(digits) == math.floor(expected_log10) + 1
    assert len(digits) > 4300
    leading = 10 ** (expected_log10 - math.floor(expected_log10) + 14)
    assert int(digits[:15]) == pytest.approx(leading, rel=1e-9)
    limit = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(0)
        assert digits == str(montufar_lower_bound(n0, hidden))
    finally:
        sys.set_int_max_str_digits(limit)


def test_bounds_at_the_width_limits_are_quick() -> None:
    # The worst case under the default limits (64 layers of 8192 units) has ~84,000 digits.
    start = time.perf_counter()
    bounds = linear_region_bounds(2730, [8192] * 64)
    assert time.perf_counter() - start < 5.0
    assert len(bounds["lower_bound"]) == math.floor(bounds["log10"]) + 1 > 80_000


def test_bounds_refuse_bad_sizes() -> None:
    with pytest.raises(ValueError):
        linear_region_bounds(0, [3])
    with pytest.raises(ValueError):
        linear_region_bounds(2, [3, 0])


def test_bounds_without_hidden_layers_is_one_region() -> None:
    bounds = linear_region_bounds(3, [])
    assert bounds["lower_bound"] == "1" and bounds["log10"] == 0.0
    assert bounds["single_layer_upper"] is None and bounds["applies"] is False


def test_module_imports_no_torch() -> None:
    import ast
    import inspect

    import mlp_engine.theory as theory

    tree = ast.parse(inspect.getsource(theory))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert "torch" not in imported and "numpy" not in imported
