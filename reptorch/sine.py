"""Sine-wave regression tasks (paper section 4, Figure 1; the OpenAI post's example).

A task is f(x) = a sin(x + b) with a ~ U[0.1, 5], b ~ U[0, 2 pi], observed on 50 evenly spaced
points of [-5, 5]. Training tasks give k mini-batches of those points drawn as the reference draws
them (`minibatch_indices`: shuffled, consumed in order, one epoch per 50 points); evaluation tasks
give `shots` distinct points to fit and the full grid to score on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reptorch.data.tasks import EvalTasks, TrainTasks, batched_minibatch_indices


@dataclass(frozen=True)
class SineTasks:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, 2 * math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    num_points: int = 50

    @property
    def grid(self) -> torch.Tensor:
        """The 50 evenly spaced inputs, (num_points, 1)."""
        return torch.linspace(*self.x_range, self.num_points).unsqueeze(1)

    def sample_functions(
        self, num_tasks: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases, each (num_tasks,)."""
        u = torch.rand(2, num_tasks, generator=generator, dtype=torch.float64)
        amplitude = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0]
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1]
        return amplitude.float(), phase.float()

    @staticmethod
    def evaluate(amplitude: torch.Tensor, phase: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """a sin(x + b), broadcasting the task dimension first: x (T, n, 1) -> (T, n, 1)."""
        return amplitude.view(-1, 1, 1) * torch.sin(x + phase.view(-1, 1, 1))

    def sample_train(
        self,
        meta_batch: int,
        train_shots: int = 0,
        inner_batch: int = 10,
        inner_iters: int = 5,
        replacement: bool = False,
        tail_shots: int | None = None,
        *,
        generator: torch.Generator,
    ) -> TrainTasks:
        """xs, ys (T, k, B, 1): the k inner mini-batches of `meta_batch` fresh tasks.

        A `TaskSource`: every task observes all 50 grid points, so `train_shots` and `tail_shots`
        do not apply.
        """
        amplitude, phase = self.sample_functions(meta_batch, generator)
        index = batched_minibatch_indices(
            meta_batch, self.num_points, inner_batch, inner_iters, replacement, generator
        )
        xs = self.grid[index]  # (T, k, B, 1)
        ys = self.evaluate(amplitude, phase, xs.flatten(1, 2)).view_as(xs)
        return TrainTasks(xs, ys)

    def sample_eval(
        self, num_tasks: int, shots: int, queries: int = 1, *, generator: torch.Generator
    ) -> EvalTasks:
        """`shots` distinct training points per task; the query set is the whole grid.

        Support x, y (T, shots, 1); query x, y (T, num_points, 1) (`queries` does not apply).
        """
        amplitude, phase = self.sample_functions(num_tasks, generator)
        index = torch.rand(num_tasks, self.num_points, generator=generator).argsort(1)[:, :shots]
        support_x = self.grid[index]
        query_x = self.grid.expand(num_tasks, -1, -1)
        return EvalTasks(
            support_x,
            self.evaluate(amplitude, phase, support_x),
            query_x,
            self.evaluate(amplitude, phase, query_x),
        )
