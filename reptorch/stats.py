"""Summary statistics reported with every result."""

from __future__ import annotations

import math

import torch


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval, 1.96 * std / sqrt(n).

    std is the sample standard deviation (n - 1); a single value has an interval of 0.
    """
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)
