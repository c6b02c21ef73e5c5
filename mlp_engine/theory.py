"""The lecture's formulas: parameter counts and linear-region bounds. Pure Python, no torch."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["exact_parameter_count"]


def exact_parameter_count(input_dim: int, hidden_dims: Sequence[int], output_dim: int, *,
                          batch_norm: bool = False) -> int:
    """Trainable parameters of Linear layers n_0 → n_1 → … → n_L (with biases), plus
    BatchNorm1d's weight and bias (2 per unit) in every hidden layer when `batch_norm`.
    Running statistics are buffers, not parameters."""
    widths = [input_dim, *hidden_dims, output_dim]
    count = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
    if batch_norm:
        count += 2 * sum(hidden_dims)
    return count
