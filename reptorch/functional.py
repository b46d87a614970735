"""Any `nn.Module` as a pure function of its parameters, with BatchNorm in batch-statistics mode.

phi (the meta-learned initialisation) is the dict of the module's parameters. The reference runs
BatchNorm in training mode in every phase, so running statistics are never used and are not part of
phi: `use_batch_statistics` removes them from a module's BatchNorm layers, which then always
normalise with the current batch (and carry no buffer that a vmapped call would mutate).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from reptorch.fast import fast_logits_for, fast_loss_and_grad_for, spec_for
from reptorch.losses import LossAndGrad, LossFn, cross_entropy_mean, cross_entropy_reduction
from reptorch.tree import Params

__all__ = ["FunctionalModel", "LossAndGrad", "LossFn", "use_batch_statistics"]


def use_batch_statistics(module: nn.Module) -> nn.Module:
    """Makes every BatchNorm layer of `module` normalise with batch statistics, in place."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
            layer.num_batches_tracked = None
    return module


class FunctionalModel:
    """`module` as `f(params, x)`, plus the loss/gradient oracles that `adapt` consumes."""

    def __init__(self, module: nn.Module, loss_fn: LossFn = cross_entropy_mean) -> None:
        self.module = use_batch_statistics(module)
        self.loss_fn = loss_fn
        self.buffers = {name: b for name, b in module.named_buffers()}

    def init_params(self) -> Params:
        """A detached copy of the module's current parameters: the initial phi."""
        return {name: p.detach().clone() for name, p in self.module.named_parameters()}

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (params, self.buffers), (x,))

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self(params, x), y)

    def loss_and_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor):
        """(loss, d loss / d params) for one task; composable with an outer `torch.func.grad`."""
        grads, loss = grad_and_value(self.loss)(params, x, y)
        return loss, grads

    def batched_loss_and_grad(self, fast: bool = True, workers: int | None = None) -> LossAndGrad:
        """The same oracle over a leading task dimension (each task its own params and batch).

        For the paper's conv nets with a softmax cross-entropy (summed or mean, `reptorch.losses`)
        this is `reptorch.fast`'s hand-written, task-parallel oracle (same values to float
        rounding, and its own inner loop for `adapt`); otherwise, or with `fast=False`,
        `vmap_loss_and_grad()`. `workers`: the fast oracle's CPU threads (None: the caller's
        torch thread count).
        """
        if fast and self.has_fast_path():
            reduction = cross_entropy_reduction(self.loss_fn)
            return fast_loss_and_grad_for(self.module, workers, reduction)
        return self.vmap_loss_and_grad()

    def has_fast_path(self) -> bool:
        """Whether `batched_loss_and_grad()` and `batched_forward()` are `reptorch.fast`'s
        kernels. Only those may run in two threads at once: `torch.func` transforms running
        concurrently in two threads corrupt each other's state (an internal assert, or "One of
        the differentiated Tensors does not require grad")."""
        fast_net = spec_for(self.module) is not None
        # a cross-entropy, summed or mean: the only losses the kernel computes
        return fast_net and cross_entropy_reduction(self.loss_fn) is not None

    def batched_forward(
        self, fast: bool = True, workers: int | None = None
    ) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        """Logits for T tasks at once: (T-batched params, x (T, B, ...)) -> (T, B, classes)."""
        forward = fast_logits_for(self.module, workers) if fast else None
        return forward or vmap(self.__call__)

    def vmap_loss_and_grad(self) -> LossAndGrad:
        """`vmap(loss_and_grad)`: the generic batched autograd oracle, the fast path's reference."""
        return vmap(self.loss_and_grad)
