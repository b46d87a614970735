"""What every meta-learning algorithm shares: a model, an inner optimiser and its state policy.

An algorithm maps phi and a meta-batch of tasks to a *meta direction* D in parameter space; the
outer update (`reptorch.outer`) then moves phi: phi <- phi + eps_t * D (the reference
interpolation), or hands -D to a `torch.optim` optimiser as a pseudo-gradient. Subclasses define
only `task_update`, the per-task contribution to D.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from reptorch import tree
from reptorch.config import INNER_STATES, PARALLEL
from reptorch.errors import ConfigError
from reptorch.functional import FunctionalModel, LossAndGrad
from reptorch.inner_optim import InnerOptimizer, merge_task_states
from reptorch.tree import Params

Batch = tuple[torch.Tensor, torch.Tensor]


class MetaStep(NamedTuple):
    direction: Params  # D: phi <- phi + eps * D
    inner_state: Any  # the inner optimiser state to carry into the next meta-iteration
    losses: torch.Tensor  # (T, k) inner losses L_{B_j}(theta_{j-1}) per task and step


class TaskUpdate(NamedTuple):
    update: Params  # this task's contribution to D
    state: Any  # inner optimiser state after the task
    losses: torch.Tensor  # (k,) or, batched, (k, T)


class MetaAlgorithm:
    """Runs the tasks of a meta-batch and averages their updates: D = mean_i update_i.

    inner_state policy:
      - 'carry' (the reference): one inner optimiser state threads through every task of every
        meta-iteration. In 'loop' mode exactly in sequence; in 'vmap' mode every task of a
        meta-batch starts from the same state and the mean of their final states is carried on
        (`merge_task_states`).
      - 'reset': a fresh inner state for every task.
    parallel: 'loop' (default) runs the tasks of a meta-batch one after another, the reference's
    exact semantics; 'vmap' all at once (faster on a GPU; several processes need it). A
    first-order algorithm's loop runs each task through the batched oracle as a batch of one (the
    fast conv-net oracle then shares the task's images over its workers); MAML's differentiates
    through the per-task oracle.
    """

    name = "base"
    first_order = True  # task updates need no graph through the inner loop (MAML: False)

    def __init__(
        self,
        model: FunctionalModel,
        inner: InnerOptimizer,
        *,
        inner_state: str = "carry",
        parallel: str = "loop",
        weight_decay: float = 1.0,
        batched_loss_and_grad: LossAndGrad | None = None,
    ) -> None:
        if inner_state not in INNER_STATES:
            raise ConfigError(
                f"inner state policy {inner_state!r}: choose one of {', '.join(INNER_STATES)}"
            )
        if parallel not in PARALLEL:
            raise ConfigError(f"parallel mode {parallel!r}: choose one of {', '.join(PARALLEL)}")
        self.model = model
        self.inner = inner
        self.inner_state_policy = inner_state
        self.parallel = parallel
        self.weight_decay = weight_decay
        self.batched_loss_and_grad = batched_loss_and_grad or model.batched_loss_and_grad()
        # the mean of a batched tree over the meta-batch's tasks; across processes the one
        # over all processes' tasks (`reptorch.distributed.Group.task_mean`, set by MetaLearner)
        self.task_mean: Callable[[Params], Params] = tree.batch_mean

    @property
    def carries(self) -> bool:
        return self.inner_state_policy == "carry"

    def init_inner_state(self, phi: Params) -> Any:
        return self.inner.init(phi)

    def task_update(
        self, loss_and_grad: LossAndGrad, phi: Params, batches: list[Batch], state: Any
    ) -> TaskUpdate:
        """One task's contribution to D (or T tasks' at once, given a batched oracle)."""
        raise NotImplementedError

    def meta_step(
        self,
        phi: Params,
        xs: torch.Tensor,
        ys: torch.Tensor,
        inner_state: Any,
        tail: Batch | None = None,
    ) -> MetaStep:
        """xs (T, k, B, ...), ys (T, k, B): the k inner mini-batches of T tasks; `tail`, if given,
        a last mini-batch per task, (T, M, ...) and (T, M), taken after them (FOMAML's separate
        tail)."""
        start = inner_state if self.carries else self.inner.init(phi)
        if self.parallel == "vmap":
            batches = list(zip(xs.transpose(0, 1), ys.transpose(0, 1), strict=True))
            if tail is not None:
                batches.append(tail)
            phis = tree.expand(phi, xs.shape[0])
            result = self.task_update(self.batched_loss_and_grad, phis, batches, start)
            carried = (
                merge_task_states(result.state, self.task_mean) if self.carries else inner_state
            )
            return MetaStep(self.task_mean(result.update), carried, result.losses.T)
        updates, losses, state = [], [], start
        for i in range(xs.shape[0]):
            task_tail = None if tail is None else (tail[0][i], tail[1][i])
            result = self._one_task(phi, xs[i], ys[i], state, task_tail)
            state = result.state if self.carries else self.inner.init(phi)
            updates.append(result.update)
            losses.append(result.losses)
        carried = state if self.carries else inner_state
        return MetaStep(tree.mean(updates), carried, torch.stack(losses))

    def _one_task(
        self, phi: Params, xs: torch.Tensor, ys: torch.Tensor, state: Any, tail: Batch | None
    ) -> TaskUpdate:
        """One task's update from `state` (loop mode): xs (k, B, ...), ys (k, B)."""
        batches = list(zip(xs, ys, strict=True))
        if tail is not None:
            batches.append(tail)
        if not self.first_order:
            return self.task_update(self.model.loss_and_grad, phi, batches, state)
        one = [(x[None], y[None]) for x, y in batches]  # a batch of one task
        result = self.task_update(self.batched_loss_and_grad, tree.expand(phi, 1), one, state)
        return TaskUpdate(
            {k: v[0] for k, v in result.update.items()},
            merge_task_states(result.state),  # drops the task dim of one task: exact
            result.losses.reshape(-1),
        )
