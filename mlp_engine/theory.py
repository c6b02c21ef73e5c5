"""The lecture's formulas: parameter counts and linear-region bounds. Pure Python, no torch.

Every count is an exact Python int (binomials from `math.comb`); region bounds for deep
nets run to thousands of digits, so `linear_region_bounds` hands them out as decimal
strings beside their log10.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "exact_parameter_count",
    "parameter_count_formula",
    "parameter_count_formula_text",
    "PARAMETER_COUNT_FORMULA",
    "single_layer_regions",
    "montufar_lower_bound",
    "montufar_applies",
    "linear_region_bounds",
    "MONTUFAR_THEOREM",
]

#: The closed form for L ≥ 1 hidden layers of uniform width n, n0 inputs and k outputs.
PARAMETER_COUNT_FORMULA = "(n0+1)*n + (L-1)*(n+1)*n + (n+1)*k"
#: The same for L = 0 (a single Linear layer).
_PARAMETER_COUNT_FORMULA_NO_HIDDEN = "(n0+1)*k"

MONTUFAR_THEOREM = "Montúfar et al. 2014"


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_widths(hidden_dims: Sequence[int]) -> list[int]:
    widths = list(hidden_dims)
    for i, width in enumerate(widths):
        _check_positive(**{f"hidden_dims[{i}]": width})
    return widths


def exact_parameter_count(
    input_dim: int, hidden_dims: Sequence[int], output_dim: int, *, batch_norm: bool = False
) -> int:
    """Trainable parameters of Linear layers n_0 → n_1 → … → n_L (with biases), plus
    BatchNorm1d's weight and bias (2 per unit) in every hidden layer when `batch_norm`.
    Running statistics are buffers, not parameters."""
    widths = [input_dim, *hidden_dims, output_dim]
    count = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
    if batch_norm:
        count += 2 * sum(hidden_dims)
    return count


def parameter_count_formula(
    input_dim: int, hidden_dim: int, hidden_layers: int, output_dim: int
) -> int:
    """The lecture's closed form for `hidden_layers` = L hidden layers of uniform width
    `hidden_dim` = n between n0 = `input_dim` inputs and k = `output_dim` outputs:

        (n0+1)·n + (L−1)·(n+1)·n + (n+1)·k        for L ≥ 1
        (n0+1)·k                                  for L = 0

    Weights and biases of the Linear layers only (no batch norm); equals
    `exact_parameter_count(n0, [n] * L, k)`.
    """
    _check_positive(input_dim=input_dim, output_dim=output_dim)
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 0:
        raise ValueError(f"hidden_layers must be a non-negative integer, got {hidden_layers!r}")
    n0, n, big_l, k = input_dim, hidden_dim, hidden_layers, output_dim
    if big_l == 0:
        return (n0 + 1) * k
    _check_positive(hidden_dim=hidden_dim)
    return (n0 + 1) * n + (big_l - 1) * (n + 1) * n + (n + 1) * k


def parameter_count_formula_text(hidden_layers: int | None = None) -> str:
    """The closed form as a string, in the symbols n0, n, L, k; the L = 0 form when
    `hidden_layers` is 0."""
    return _PARAMETER_COUNT_FORMULA_NO_HIDDEN if hidden_layers == 0 else PARAMETER_COUNT_FORMULA


def single_layer_regions(n0: int, n1: int) -> int:
    """Maximal number of linear regions of one hidden ReLU layer of n1 units on n0 inputs:
    Σ_{j=0}^{n0} C(n1, j), the number of regions of n1 hyperplanes in general position in
    R^n0 (Zaslavsky). It is 2^n1 when n1 ≤ n0 and n1 + 1 when n0 = 1."""
    _check_positive(n0=n0, n1=n1)
    if n1 <= n0:
        return 1 << n1
    # C(n1, j+1) = C(n1, j)·(n1−j)/(j+1), exactly: one small multiply and divide per term
    # instead of a fresh math.comb, which matters when n0 runs into the thousands.
    total = term = 1
    for j in range(n0):
        term = term * (n1 - j) // (j + 1)
        total += term
    return total


def montufar_applies(n0: int, hidden_dims: Sequence[int]) -> bool:
    """Whether Montúfar et al.'s deep bound applies as stated: at least one hidden layer and
    every hidden width n_i ≥ n0."""
    widths = _check_widths(hidden_dims)
    _check_positive(n0=n0)
    return bool(widths) and min(widths) >= n0


def montufar_lower_bound(n0: int, hidden_dims: Sequence[int]) -> int:
    """Lower bound on the maximal number of linear regions of a ReLU net with n0 inputs and
    L hidden layers of widths n_1, …, n_L (Montúfar, Pascanu, Cho, Bengio 2014, "On the
    number of linear regions of deep neural networks", the corollary for deep rectifier
    nets; the lecture's Theorem 2.3.4). When every n_i ≥ n0:

        ( ∏_{i=1}^{L−1} ⌊n_i / n0⌋^{n0} ) · Σ_{j=0}^{n0} C(n_L, j)

    For L = 1 this is `single_layer_regions(n0, n_1)`, which is exact. For L = 0 (an affine
    map) the answer is 1.

    When some n_i < n0 the theorem does not apply. Then the bound is the theorem applied
    with the effective input dimension d = min(n0, n_1, …, n_L):

        ( ∏_{i=1}^{L−1} ⌊n_i / d⌋^d ) · Σ_{j=0}^{d} C(n_L, j)

    This is sound: a net whose first layer ignores all but d of the inputs computes
    f(x) = g(x_1, …, x_d), and its linear regions are the cylinders over the regions of g,
    one for one; g is a net on d inputs whose widths are all ≥ d, so the theorem bounds
    its regions from below. (Keeping n0 and merely letting the narrow layers contribute a
    factor 1 would not be justified by the theorem: after a layer of width m < n0 the
    later layers act on an m-dimensional image of the input.)
    """
    _check_positive(n0=n0)
    widths = _check_widths(hidden_dims)
    if not widths:
        return 1
    d = min(n0, *widths)
    product = 1
    for width in widths[:-1]:
        product *= (width // d) ** d
    return product * single_layer_regions(d, widths[-1])


def _decimal_string(value: int) -> str:
    # str(int) refuses more than sys.get_int_max_str_digits() (4300) digits; Decimal's
    # conversion is exact and has no such limit, and changing the limit is process-wide.
    return str(decimal.Decimal(value))


def _log10(value: int) -> float:
    # math.log10 takes arbitrarily large ints (it works on the mantissa and exponent),
    # correct to double precision.
    return math.log10(value)


def linear_region_bounds(n0: int, hidden_dims: Sequence[int]) -> dict[str, Any]:
    """The region bounds the API shows for a ReLU net with n0 inputs and these hidden
    widths:

    - ``lower_bound``: `montufar_lower_bound` as an exact decimal string;
    - ``log10``: its base-10 logarithm (a float, good for bounds of any size);
    - ``single_layer_upper``: Σ_{j≤n0} C(n1, j) as a decimal string for a net with one
      hidden layer (the exact maximum, an upper bound as well), else None;
    - ``theorem``: the source of the lower bound;
    - ``applies``: whether the theorem applies as stated (every n_i ≥ n0); when False the
      lower bound is the theorem at the effective input dimension min(n0, n_i), see
      `montufar_lower_bound`. With no hidden layer (an affine map: one region) the lower
      bound is "1" and ``applies`` is False.
    """
    widths = _check_widths(hidden_dims)
    lower = montufar_lower_bound(n0, widths)
    single = single_layer_regions(n0, widths[0]) if len(widths) == 1 else None
    return {
        "lower_bound": _decimal_string(lower),
        "log10": _log10(lower),
        "single_layer_upper": None if single is None else _decimal_string(single),
        "theorem": MONTUFAR_THEOREM,
        "applies": montufar_applies(n0, widths),
    }
