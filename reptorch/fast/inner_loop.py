"""The inner loop of the fast kernels: k steps of loss, gradient and optimiser update on flat
(T, P) buffers, in TorchScript like the step itself (`reptorch.fast.kernel`).

Each step: the weight decay, the loss and gradient of every slice of the step's images
(`ConvNetKernel.loss_and_grad`), the slices' partial gradients summed in slice order, then the
optimiser update (Adam: the ops of `inner_optim.Adam.step`, in the same order; or SGD) of this
worker's column shares. `NativeCommKernel` is the same loop whose workers meet through the native
ops of `reptorch.fast.comm`.
"""

import math

import torch
from torch import Tensor

from reptorch.fast.kernel import ConvNetKernel


class InnerLoopKernel(ConvNetKernel):
    """`ConvNetKernel` with its inner loop (`adapt`) and optimiser step (`_update`)."""

    def _update(
        self,
        flat: Tensor,
        partials: list[Tensor],
        total: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        denom: Tensor,
        hyper: list[float],
        step: int,
        lo: int,
        hi: int,
    ) -> None:
        """Columns lo:hi of one inner step: the slices' partial gradients summed in slice order
        into `total`, then the optimiser update of `flat` (Adam: the ops of
        `inner_optim.Adam.step`, in the same order; else SGD)."""
        p = flat[:, lo:hi]
        g = total[:, lo:hi]
        if len(partials) > 1:
            torch.add(partials[0][:, lo:hi], partials[1][:, lo:hi], out=g)
            for other in partials[2:]:
                g.add_(other[:, lo:hi])
        lr, beta1, beta2, eps = hyper[1], hyper[2], hyper[3], hyper[4]
        if hyper[0] > 0.0:
            step_size = lr / (1.0 - beta1**step)
            bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
            m = g
            if beta1 != 0.0:  # with beta1 = 0, lerp(m, g, 1) is exactly g
                m = exp_avg[:, lo:hi].lerp_(g, 1.0 - beta1)
            v = exp_avg_sq[:, lo:hi]
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            d = torch.sqrt(v, out=denom[:, lo:hi]).div_(bias_correction2_sqrt).add_(eps)
            p.addcdiv_(m, d, value=-step_size)
        else:
            p.add_(g, alpha=-lr)

    @torch.jit.export
    def adapt(
        self,
        params: list[Tensor],
        grads: list[list[Tensor]],
        flat: Tensor,
        partials: list[Tensor],
        total: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        denom: Tensor,
        xs: list[list[Tensor]],
        ys: list[list[Tensor]],
        losses: list[Tensor],
        hyper: list[float],
        step0: int,
        comm: int,
        rank: int,
        first: int,
        batch: int,
        columns: list[int],
    ) -> None:
        """k inner steps in place on flat (T, P) buffers, as `reptorch.adapt.adapt` would take them.

        xs[j] / ys[j]: step j's slices that this call computes (all of them with `comm < 0`,
        one per worker otherwise), the first being slice `first`; grads[s] / losses[s]: their
        per-parameter gradient views (GEMM layout, of `partials[first + s]`) and (k, T) losses.
        params: per-parameter views of `flat`. Each step: decay, loss and gradient, then
        `_update` of this call's column shares, `columns` = [lo_0, hi_0, lo_1, hi_1, ...]: each
        worker its own when workers split the images, one worker all of them in the same chunks
        (so that every elementwise op sees the same extents). hyper = [adam (0/1), lr, beta1,
        beta2, eps, weight_decay, loss divisor].
        """
        decay, divisor = hyper[5], hyper[6]
        for j in range(len(xs)):
            if decay != 1.0:
                for q in range(0, len(columns), 2):
                    flat[:, columns[q] : columns[q + 1]].mul_(decay)
                if comm >= 0:
                    self._barrier(comm)
            step_losses = self.loss_and_grad(
                params, xs[j], ys[j], grads, True, comm, rank, first, batch, divisor
            )
            for s in range(len(step_losses)):
                losses[s][j].copy_(step_losses[s])
            if comm >= 0:
                self._barrier(comm)
            for q in range(0, len(columns), 2):
                self._update(
                    flat, partials, total, exp_avg, exp_avg_sq, denom, hyper,
                    step0 + j + 1, columns[q], columns[q + 1],
                )  # fmt: skip
            if comm >= 0:
                self._barrier(comm)
        if hyper[0] > 0.0 and hyper[2] == 0.0 and len(xs) > 0:
            for q in range(0, len(columns), 2):  # the moment is the last gradient
                lo, hi = columns[q], columns[q + 1]
                exp_avg[:, lo:hi].copy_(total[:, lo:hi])


class NativeCommKernel(InnerLoopKernel):
    """`ConvNetKernel` whose workers meet through the native ops (`reptorch.fast.comm`): no
    call back into Python, so the scripted step never takes the GIL. Built only once
    `comm.native()` has loaded the ops (scripting resolves them)."""

    def _allreduce(self, comm: int, rank: int, value: Tensor) -> Tensor:
        return torch.ops.reptorch_comm.allreduce(comm, rank, value)

    def _barrier(self, comm: int) -> None:
        torch.ops.reptorch_comm.barrier(comm)
