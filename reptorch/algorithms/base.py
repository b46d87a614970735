"""The meta-step every algorithm shares: run a meta-batch's tasks, average their updates.

An algorithm maps phi and a meta-batch of T tasks to a *meta direction* D = mean_i update_i in
parameter space; the outer update (`reptorch.outer`) then moves phi: phi <- phi + eps_t * D (the
reference interpolation), or hands -D to a `torch.optim` optimiser as a pseudo-gradient.
Subclasses define only `task_update`, one task's update_i (Reptile: W_i - phi).

The tasks run in one of two ways (`parallel`):
- `sequential` ('loop', the default): one task after another, the reference's exact semantics:
  with `inner_state='carry'` one inner optimiser state threads through every task in order.
- `side_by_side` ('vmap'): all T tasks at once through the batched oracle, each from the same
  inner state; the mean of their final states is carried on (faster on a GPU; what several
  torchrun processes run).
Losses are (T, k) at every boundary: per task (row), per inner step (column).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from reptorch import tree
from reptorch.config import INNER_STATES, PARALLEL
from reptorch.errors import ConfigError
from reptorch.functional import FunctionalModel, LossAndGrad
from reptorch.inner_optim import InnerOptimizer, merge_task_states, task_state
from reptorch.tree import Params

Batch = tuple[torch.Tensor, torch.Tensor]


class MetaStep(NamedTuple):
    direction: Params  # D: phi <- phi + eps * D
    inner_state: Any  # the inner optimiser state to carry into the next meta-iteration
    losses: torch.Tensor  # (T, k) inner losses L_{B_j}(theta_{j-1}) per task and step


class TaskUpdate(NamedTuple):
    update: Params  # this task's contribution to D (T-batched on the side-by-side path)
    state: Any  # inner optimiser state after the task
    losses: torch.Tensor  # (k,) for one task, (T, k) for T tasks side by side


class MetaAlgorithm:
    """D = mean_i update_i over a meta-batch's tasks, run `sequential`ly or `side_by_side`.

    inner_state: 'carry' (the reference) threads one inner optimiser state through every task of
    every meta-iteration; 'reset' gives every task a fresh one. A first-order algorithm's
    sequential path runs each task through the batched oracle as a batch of one (the fast
    conv-net oracle then shares the task's images over its workers); MAML's differentiates
    through the per-task oracle.
    """

    name = "base"
    first_order = True  # task updates need no graph through the inner loop (MAML: False)
    # a task's update is a function of its adapted weights alone (`weights_update`): then an
    # oracle with its own chain loop (`oracle.chain`) may run the whole sequential chain
    updates_from_weights = False

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
        """One task's contribution to D (or T tasks' at once, given a batched oracle and
        T-batched phi and mini-batches)."""
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
        tail). `inner_state`: the state carried in from the last meta-iteration."""
        if self.parallel == "vmap":
            return self.side_by_side(phi, xs, ys, inner_state, tail)
        return self.sequential(phi, xs, ys, inner_state, tail)

    def weights_update(self, weights: Params, phi: Params) -> Params:
        """A task's update from its adapted weights W (where `updates_from_weights`)."""
        raise NotImplementedError

    def sequential(
        self, phi: Params, xs: torch.Tensor, ys: torch.Tensor, inner_state: Any, tail: Batch | None
    ) -> MetaStep:
        """Task after task, each from the state the one before it left (the reference)."""
        chained = self.oracle_chain(phi, xs, ys, inner_state, tail)
        if chained is not None:
            return chained
        updates, losses = [], []
        state = inner_state if self.carries else self.inner.init(phi)
        for i in range(xs.shape[0]):
            batches = list(zip(xs[i], ys[i], strict=True))
            if tail is not None:
                batches.append((tail[0][i], tail[1][i]))
            result = self.one_task(phi, batches, state)
            state = result.state if self.carries else self.inner.init(phi)
            updates.append(result.update)
            losses.append(result.losses)
        carried = state if self.carries else inner_state
        return MetaStep(tree.mean(updates), carried, torch.stack(losses))

    def oracle_chain(
        self, phi: Params, xs: torch.Tensor, ys: torch.Tensor, inner_state: Any, tail: Batch | None
    ) -> MetaStep | None:
        """`sequential` in the oracle's own chain loop (`oracle.chain`, e.g.
        `reptorch.fast.chain`: the same numbers with fewer conversions per task), where there is
        one and the update comes from the weights alone with the state carried; else None."""
        chain = getattr(self.batched_loss_and_grad, "chain", None)
        usable = self.updates_from_weights and self.first_order and self.carries
        if chain is None or not usable or tail is not None:
            return None
        result = chain(phi, xs, ys, self.inner, inner_state, weight_decay=self.weight_decay)
        if result is None:
            return None
        weights, state, losses = result
        updates = [self.weights_update(w, phi) for w in weights]
        return MetaStep(tree.mean(updates), state, losses)

    def side_by_side(
        self, phi: Params, xs: torch.Tensor, ys: torch.Tensor, inner_state: Any, tail: Batch | None
    ) -> MetaStep:
        """All T tasks at once, each from the same state; their mean final state carries on."""
        batches = list(zip(xs.transpose(0, 1), ys.transpose(0, 1), strict=True))  # k x (T, B)
        if tail is not None:
            batches.append(tail)
        start = inner_state if self.carries else self.inner.init(phi)
        phis = tree.expand(phi, xs.shape[0])
        result = self.task_update(self.batched_loss_and_grad, phis, batches, start)
        carried = merge_task_states(result.state, self.task_mean) if self.carries else inner_state
        return MetaStep(self.task_mean(result.update), carried, result.losses)

    def one_task(self, phi: Params, batches: list[Batch], state: Any) -> TaskUpdate:
        """One task's update from `state` on the sequential path; losses (k,)."""
        if not self.first_order:
            return self.task_update(self.model.loss_and_grad, phi, batches, state)
        one = [(x[None], y[None]) for x, y in batches]  # a batch of one task
        result = self.task_update(self.batched_loss_and_grad, tree.expand(phi, 1), one, state)
        return TaskUpdate(
            {k: v[0] for k, v in result.update.items()},
            task_state(result.state),  # the one task's own state (its row)
            result.losses[0],
        )
