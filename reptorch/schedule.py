"""The linearly annealed meta step size of the reference code."""

from __future__ import annotations


def linear_meta_step(iteration: int, total: int, initial: float, final: float) -> float:
    """eps_t = (t / T) eps_final + (1 - t / T) eps_0, for t = 0..T-1 (paper: 1.0 -> 0).

    t counts meta-iterations from 0, so the first update uses eps_0 and none reaches eps_final.
    """
    frac_done = iteration / total
    return frac_done * final + (1 - frac_done) * initial
