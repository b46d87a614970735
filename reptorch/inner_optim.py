"""Inner-loop optimisers as pure functions with explicit state: `init(params)`, `step(...)`.

Step for step equal to `torch.optim.SGD` and `torch.optim.Adam` (single-tensor implementation).
The math is elementwise, so the same `step` serves one task or a batch of tasks carrying a leading
task dimension; the step counter is a plain int shared by all tasks of a batch.

The reference inner optimiser is Adam with beta1 = 0 (no momentum), beta2 = 0.999, eps = 1e-8.
(TensorFlow places eps outside the bias correction of the second moment; we follow PyTorch's
placement, which differs by a factor sqrt(1 - beta2^t) on eps only.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from reptorch import tree
from reptorch.config import INNER_OPTIMIZERS
from reptorch.errors import ConfigError
from reptorch.tree import Params


class SGDState(NamedTuple):
    step: int


class AdamState(NamedTuple):
    """Adam's moment estimates and step counter t (bias corrections use t)."""

    step: int
    exp_avg: Params
    exp_avg_sq: Params


class InnerOptimizer(Protocol):
    lr: float

    def init(self, params: Params): ...

    def step(self, params: Params, grads: Params, state): ...


@dataclass(frozen=True)
class SGD:
    """theta <- theta - lr * g."""

    lr: float

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"SGD learning rate must be positive, got {self.lr}")

    def init(self, params: Params) -> SGDState:
        return SGDState(step=0)

    def step(self, params: Params, grads: Params, state: SGDState) -> tuple[Params, SGDState]:
        new = tree.tree_map(lambda p, g: torch.add(p, g, alpha=-self.lr), params, grads)
        return new, SGDState(step=state.step + 1)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba) with the reference defaults: beta1 = 0, beta2 = 0.999, eps = 1e-8.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    lr: float
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"Adam learning rate must be positive, got {self.lr}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError(f"Adam betas must lie in [0, 1), got ({self.beta1}, {self.beta2})")

    def init(self, params: Params) -> AdamState:
        zeros = tree.zeros_like(params)
        return AdamState(step=0, exp_avg=zeros, exp_avg_sq=tree.zeros_like(params))

    def step(self, params: Params, grads: Params, state: AdamState) -> tuple[Params, AdamState]:
        t = state.step + 1
        step_size = self.lr / (1 - self.beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - self.beta2**t)
        new_params, exp_avg, exp_avg_sq = {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            m = torch.lerp(state.exp_avg[name], g, 1 - self.beta1)
            # Same operations, in the same order, as torch.optim.Adam's single-tensor path.
            v = torch.addcmul(state.exp_avg_sq[name] * self.beta2, g, g, value=1 - self.beta2)
            denom = v.sqrt() / bias_correction2_sqrt + self.eps
            new_params[name] = torch.addcdiv(p, m, denom, value=-step_size)
            exp_avg[name], exp_avg_sq[name] = m, v
        return new_params, AdamState(step=t, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)


def clone_state(state):
    """A copy of an inner optimiser state that later in-place steps cannot change."""
    if isinstance(state, AdamState):
        return state._replace(
            exp_avg=tree.clone(state.exp_avg), exp_avg_sq=tree.clone(state.exp_avg_sq)
        )
    return state


def merge_task_states(state, mean=tree.batch_mean):
    """The inner state carried out of a meta-batch run in parallel: the mean over tasks
    (`mean`: of a batched tree over its tasks; across processes, `Group.task_mean`).

    The reference threads one Adam state through the tasks in sequence. Run in parallel, every task
    starts from the same incoming state and ends with its own (a leading task dimension); we carry
    the mean of the tasks' moment estimates, with the step counter advanced by the k steps each
    task took (the counter only enters Adam's bias correction, which is ~1 after a few hundred
    steps).
    """
    if isinstance(state, AdamState):
        return state._replace(exp_avg=mean(state.exp_avg), exp_avg_sq=mean(state.exp_avg_sq))
    return state


def task_state(state, task: int = 0):
    """Task `task`'s own inner state out of a batched one (its moments' row): what
    `merge_task_states` gives for a batch of one task, exactly, without its float64 mean's
    ~150 small ops (the exact chain runs it after every task)."""
    if isinstance(state, AdamState):
        return state._replace(
            exp_avg={k: v[task] for k, v in state.exp_avg.items()},
            exp_avg_sq={k: v[task] for k, v in state.exp_avg_sq.items()},
        )
    return state


def make_inner_optimizer(name: str, lr: float) -> InnerOptimizer:
    """'adam' (the reference, beta1 = 0) or 'sgd' (the reference's `--sgd`)."""
    optimizers: dict[str, type[Adam] | type[SGD]] = {"adam": Adam, "sgd": SGD}
    if name not in optimizers:
        raise ConfigError(
            f"unknown inner optimiser {name!r}: choose one of {', '.join(INNER_OPTIMIZERS)}"
        )
    return optimizers[name](lr)
