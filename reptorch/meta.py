"""A meta-learner: phi, an algorithm, an outer update and the carried inner state, stepped in time.

One meta-iteration: D = algorithm(phi, tasks); phi <- outer(phi, D, t); t <- t + 1.
"""

from __future__ import annotations

from typing import Any

import torch

from reptorch.algorithms import MetaAlgorithm
from reptorch.outer import Interpolation
from reptorch.tree import Params


class MetaLearner:
    def __init__(self, algorithm: MetaAlgorithm, outer: Interpolation, phi: Params) -> None:
        self.algorithm = algorithm
        self.outer = outer
        self.phi = phi
        self.inner_state: Any = algorithm.init_inner_state(phi)
        self.iteration = 0

    def step(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor,
        tail: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One meta-iteration on the tasks' mini-batches; returns the inner losses (T, k)."""
        result = self.algorithm.meta_step(self.phi, xs, ys, self.inner_state, tail)
        self.phi = self.outer.update(self.phi, result.direction, self.iteration)
        self.inner_state = result.inner_state
        self.iteration += 1
        return result.losses
