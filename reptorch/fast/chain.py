"""The reference's exact chain on flat buffers: T tasks in sequence, each adapted from phi, one
inner optimiser state threaded through them (`MetaAlgorithm.sequential`).

Run task by task through `ConvNetOracle.adapt`, every task converts phi and the carried Adam
moments from parameter trees into flat GEMM-layout buffers and back: ~150 small calls, ~3 ms of a
5-way Omniglot task's 25. Here phi is laid out once into a (T, P) buffer (a row per task, each
adapted in place), the moments once into (1, P) buffers that every task updates in place, and
each task runs on the oracle's own per-task runners. The values are those of the task-by-task
path: the same kernels on the same numbers, only fewer copies (tests/test_fast.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from reptorch.fast.flat import FlatLayout, from_gemm_views, to_gemm
from reptorch.inner_optim import SGD, Adam, AdamState, SGDState
from reptorch.tree import Params


class ChainRunner(Protocol):
    """What the chain needs of an oracle (`reptorch.fast.oracle.ConvNetOracle`): its plan, its
    lock, and its two ways of running one task's k steps in place on flat buffers."""

    _busy: threading.Lock

    def hyper(self, optimizer: Adam | SGD, weight_decay: float, batch: int) -> list[float]: ...

    def plan(self, tasks: int, batch: int, workers: int) -> tuple[str, int]: ...

    def _workers(self, x: Tensor) -> int: ...

    def _adapt_by_images(self, layout, flat, m, v, xs, ys, hyper, step0, size) -> Tensor: ...

    def _adapt_by_tasks(
        self, layout, flat, m, v, xs, ys, hyper, step0, per_item, fill: Callable[[slice], None]
    ) -> Tensor: ...


def adapt_chain(
    oracle: ChainRunner,
    phi: Params,
    xs: Tensor,
    ys: Tensor,
    optimizer: object,
    state: Any,
    weight_decay: float = 1.0,
) -> tuple[list[Params], Any, Tensor] | None:
    """Tasks i = 1..T in order: W_i = k inner steps from phi on xs[i] (k, B, ...) / ys[i] (k, B),
    from the state task i - 1 left (`state` for the first). Returns ([W_1..W_T], the last
    state, losses (T, k)), or None for an optimiser it does not know."""
    if not isinstance(optimizer, (Adam, SGD)) or xs.shape[0] == 0 or xs.shape[1] == 0:
        return None
    tasks, steps, batch = xs.shape[0], xs.shape[1], xs.shape[2]
    adam = isinstance(optimizer, Adam)
    with torch.no_grad():
        gemm_phi = {k: to_gemm(k, v) for k, v in phi.items()}
        layout = FlatLayout.of(gemm_phi)
        finals = xs.new_empty(tasks, layout.size)  # row i: task i's weights, from phi
        layout.fill(finals, gemm_phi)
        m = v = xs.new_empty(1, 0)  # unused by SGD
        if adam:
            m, v = xs.new_empty(1, layout.size), xs.new_empty(1, layout.size)
            layout.fill(m, {k: to_gemm(k, t) for k, t in state.exp_avg.items()})
            layout.fill(v, {k: to_gemm(k, t) for k, t in state.exp_avg_sq.items()})
        hyper = oracle.hyper(optimizer, weight_decay, batch)
        losses = xs.new_empty(tasks, steps)
        mode, share = oracle.plan(1, batch, oracle._workers(xs))
        with oracle._busy:
            for i in range(tasks):
                task_xs = [x[None] for x in xs[i]]
                task_ys = [y[None] for y in ys[i]]
                p, step0 = finals[i : i + 1], state.step + i * steps
                if mode == "images":
                    run = oracle._adapt_by_images(
                        layout, p, m, v, task_xs, task_ys, hyper, step0, share
                    )
                else:
                    run = oracle._adapt_by_tasks(
                        layout, p, m, v, task_xs, task_ys, hyper, step0, 1, _filled
                    )
                losses[i] = run[:, 0]
    weights = from_gemm_views(layout, finals)
    finals_per_task = [{k: w[i] for k, w in weights.items()} for i in range(tasks)]
    last = state.step + tasks * steps
    if adam:
        exp_avg, exp_avg_sq = from_gemm_views(layout, m), from_gemm_views(layout, v)
        out = AdamState(
            last, {k: t[0] for k, t in exp_avg.items()}, {k: t[0] for k, t in exp_avg_sq.items()}
        )
    else:
        out = SGDState(last)
    return finals_per_task, out, losses


def _filled(rows: slice) -> None:
    """The by-tasks runner's fill: here every buffer is filled before the chain starts."""
