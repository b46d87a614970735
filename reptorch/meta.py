"""A meta-learner: phi, an algorithm, an outer update and the carried inner state, stepped in time.

One meta-iteration: D = algorithm(phi, tasks); phi <- outer(phi, D, t); t <- t + 1.

With several processes (`reptorch.distributed`) every process receives the same T tasks and runs
its share of them; the algorithm's means over tasks (D, the merged inner state) are then taken
over all processes' tasks (`Group.task_mean`: sum_i update_i / T, whatever the shares), so every
process applies the same update, the one a single process would.
"""

from __future__ import annotations

from typing import Any

import torch

from reptorch.algorithms import MetaAlgorithm
from reptorch.distributed import LOCAL, Group
from reptorch.outer import Interpolation
from reptorch.tree import Params


class MetaLearner:
    def __init__(
        self,
        algorithm: MetaAlgorithm,
        outer: Interpolation,
        phi: Params,
        group: Group = LOCAL,
    ) -> None:
        self.algorithm = algorithm
        self.outer = outer
        self.phi = phi
        self.inner_state: Any = algorithm.init_inner_state(phi)
        self.iteration = 0
        self.group = group
        if group.size > 1:
            algorithm.task_mean = group.task_mean

    def step(
        self,
        xs: torch.Tensor,
        ys: torch.Tensor,
        tail: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One meta-iteration on the tasks' mini-batches; returns the inner losses (T, k)."""
        total = xs.shape[0]
        part = self.group.share(total)
        if self.group.size > 1:  # this process's tasks
            mine = slice(part.start, part.stop)
            xs, ys = xs[mine], ys[mine]
            tail = None if tail is None else (tail[0][mine], tail[1][mine])
        result = self.algorithm.meta_step(self.phi, xs, ys, self.inner_state, tail)
        self.phi = self.outer.update(self.phi, result.direction, self.iteration)
        self.inner_state = result.inner_state
        self.iteration += 1
        if self.group.size == 1:
            return result.losses
        losses = result.losses.new_zeros((total, *result.losses.shape[1:]))
        losses[part.start : part.stop] = result.losses  # every task's row: exact sums with 0
        return self.group.all_sum([losses], "the meta-batch's losses")[0]
