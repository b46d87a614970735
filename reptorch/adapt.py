"""`adapt`: k inner optimiser steps on one task, the heart shared by training, evaluation and demo.

theta_0 = phi;  theta_j = step(theta_{j-1}, grad L_{B_j}(theta_{j-1})),  j = 1..k,
over the task's k mini-batches B_1..B_k in order. Returns theta_k, the optimiser state and the
per-step losses L_{B_j}(theta_{j-1}).

The gradient comes from an oracle `(params, x, y) -> (loss, grads)`. With a batched oracle and a
leading task dimension on params and batches, the same loop runs T tasks at once (the side-by-side
meta-step): the optimiser math is elementwise and broadcasts over tasks.

Losses are task-major at this boundary as at every other (`TaskUpdate`, `MetaStep`,
`MetaLearner.step`, the oracles' own loops): (k,) for one task, (T, k) for T tasks at once.

An oracle may also bring its own first-order inner loop, `oracle.adapt(params, batches, optimizer,
state, weight_decay=...) -> AdaptResult | None` (`reptorch.fast.ConvNetOracle` does: flat buffers,
one worker per chunk of tasks for all k steps). `adapt` hands the whole loop to it when not
`differentiable`, and falls back to the loop below when it returns None (an optimiser it does not
know). It must give the same result as this loop with the same oracle (tests/test_fast.py).
Likewise `oracle.chain(phi, xs, ys, optimizer, state, weight_decay=...)` may run the reference's
whole sequential chain of T tasks (`MetaAlgorithm.oracle_chain`; `reptorch.fast.chain`), with the
same numbers as the task-by-task path (tests/test_fast_chain.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from reptorch import tree
from reptorch.inner_optim import InnerOptimizer
from reptorch.losses import LossAndGrad
from reptorch.tree import Params


class AdaptResult(NamedTuple):
    params: Params  # theta_k
    state: Any  # the inner optimiser state after k steps
    losses: torch.Tensor  # L_{B_j}(theta_{j-1}): (k,) for one task, (T, k) for T tasks


def adapt(
    loss_and_grad: LossAndGrad,
    params: Params,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: InnerOptimizer,
    state: Any,
    *,
    differentiable: bool = False,
    weight_decay: float = 1.0,
) -> AdaptResult:
    """k inner steps, one per mini-batch `(x, y)` of `batches` (e.g. `zip(xs, ys)`), in order.

    First-order mode (default) detaches everything: no autograd graph survives a step, so memory
    stays flat. `differentiable=True` keeps the graph through every step (second-order MAML; the
    oracle must then be differentiable, as `FunctionalModel.loss_and_grad` is under `torch.func`).
    `weight_decay` is the reference's multiplicative rate applied to the weights before each step
    (1.0: none).
    """
    if not differentiable:
        own_loop = getattr(loss_and_grad, "adapt", None)
        batches = list(batches)
        if own_loop is not None and batches:
            result = own_loop(params, batches, optimizer, state, weight_decay=weight_decay)
            if result is not None:
                return result
        params = tree.detach(params)
    losses = []
    for x, y in batches:
        if weight_decay != 1.0:
            params = tree.scale(params, weight_decay)
        loss, grads = loss_and_grad(params, x, y)
        if not differentiable:
            loss, grads = loss.detach(), tree.detach(grads)
        params, state = optimizer.step(params, grads, state)
        losses.append(loss)
    return AdaptResult(params, state, torch.stack(losses, -1) if losses else torch.zeros(0))
