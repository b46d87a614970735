"""Task-parallel gradient oracle for the paper's conv nets, with the core's batched-oracle contract.

`oracle(params, x, y) -> (loss (T,), grads)`: params carry a leading task dim T, x is
(T, B, C, H, W) float, y is (T, B) int64; every task has its own parameters and BatchNorm batch
statistics. Equal, to float rounding, to `FunctionalModel(net).vmap_loss_and_grad()` (the
vmapped autograd oracle).

On CPU the T tasks are split into contiguous chunks run by `workers` single-threaded threads
(PyTorch releases the GIL inside kernels). The per-layer kernels are too small for intra-op
threading to keep two cores busy (measured: 2 intra-op threads gave ~1.5x over 1, two
single-threaded workers ~1.7x, and far less slowdown when another process holds a core, since no
OpenMP barrier waits on a descheduled thread).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from reptorch.fast import convnet
from reptorch.fast.convnet import ConvNetSpec, Params
from reptorch.fast.flat import FlatLayout
from reptorch.models import ConvBlock, FourBlockNet, MiniImageNetNet, OmniglotNet

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _single_threaded() -> None:
    torch.set_num_threads(1)  # per-thread OpenMP setting: the caller's threads are unaffected


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of `workers` threads whose torch kernels run single-threaded."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(
                workers, thread_name_prefix="reptorch-fast", initializer=_single_threaded
            )
        return _POOLS[workers]


def _chunks(total: int, parts: int) -> list[slice]:
    """`parts` contiguous slices of range(total), sizes differing by at most one."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append(slice(start, stop))
        start = stop
    return bounds


class ConvNetOracle:
    """Batched loss/gradient (and forward) of a paper conv net, hand-written, task-parallel.

    workers: CPU threads splitting the tasks; None means `torch.get_num_threads()` of the caller
    (1 runs in the caller's thread with its own intra-op threading). CUDA inputs always run in one
    call (the GPU is already parallel over tasks).
    """

    def __init__(self, spec: ConvNetSpec, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec = spec
        self.workers = workers

    def _parts(self, x: Tensor) -> int:
        if x.device.type != "cpu":
            return 1
        workers = self.workers if self.workers is not None else torch.get_num_threads()
        return max(1, min(workers, x.shape[0]))

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
        parts = self._parts(x)
        if parts == 1:
            return convnet.loss_and_grad(params, x, y, self.spec)
        tasks = x.shape[0]
        loss = x.new_empty(tasks)
        grads = {k: x.new_empty(tasks, *v.shape[1:]) for k, v in params.items()}

        def run(s: slice) -> None:
            out = {k: v[s] for k, v in grads.items()}
            part = {k: v[s] for k, v in params.items()}
            loss[s] = convnet.loss_and_grad(part, x[s], y[s], self.spec, out=out)[0]

        for future in [_pool(parts).submit(run, s) for s in _chunks(tasks, parts)]:
            future.result()
        return loss, grads

    def adapt(
        self,
        params: Params,
        batches: Iterable[tuple[Tensor, Tensor]],
        optimizer: object,
        state: object,
        *,
        weight_decay: float = 1.0,
    ):
        """The whole first-order inner loop of `reptorch.adapt.adapt` for T tasks, or None.

        Handles `inner_optim.Adam` and `inner_optim.SGD` (else returns None: use the generic loop).
        Params, gradients and Adam moments live in flat (T, P) buffers (`FlatLayout`), so a step is
        a few elementwise ops, done in place in the same order as `Adam.step` (bitwise the same
        update). Each worker runs all k steps for its chunk of tasks: no per-step synchronisation.
        Returns `AdaptResult(params (T-batched views), state (T-batched), losses (k, T))`.
        """
        from reptorch.adapt import AdaptResult
        from reptorch.inner_optim import SGD, Adam, AdamState, SGDState

        if not isinstance(optimizer, (Adam, SGD)):
            return None
        batches = list(batches)
        if not batches:
            return None
        x0 = batches[0][0]
        tasks = x0.shape[0]
        layout = FlatLayout.of(params, batched=True)
        with torch.no_grad():
            flat = layout.pack(params, tasks, x0)
        losses = x0.new_empty(len(batches), tasks)
        is_adam = isinstance(optimizer, Adam)
        if is_adam:
            with torch.no_grad():
                m = layout.pack(state.exp_avg, tasks, x0)
                v = layout.pack(state.exp_avg_sq, tasks, x0)
        else:
            m = v = flat  # unused

        def run(s: slice) -> None:
            with torch.no_grad():
                p, grad = flat[s], torch.empty_like(flat[s])
                pv, gv = layout.views(p), layout.views(grad)
                denom = torch.empty_like(p) if is_adam else p
                for j, (x, y) in enumerate(batches):
                    if weight_decay != 1.0:
                        p.mul_(weight_decay)
                    losses[j, s] = convnet.loss_and_grad(pv, x[s], y[s], self.spec, out=gv)[0]
                    if is_adam:
                        _adam_step(optimizer, state.step + j + 1, p, grad, m[s], v[s], denom)
                    else:
                        p.add_(grad, alpha=-optimizer.lr)
                if is_adam and optimizer.beta1 == 0.0:
                    m[s] = grad  # lerp(m, g, 1) is exactly g: the last gradient

        parts = self._parts(x0)
        if parts == 1:
            run(slice(None))
        else:
            for future in [_pool(parts).submit(run, s) for s in _chunks(tasks, parts)]:
                future.result()
        steps = state.step + len(batches)
        if is_adam:
            new_state = AdamState(steps, layout.views(m), layout.views(v))
        else:
            new_state = SGDState(steps)
        return AdaptResult(layout.views(flat), new_state, losses)

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """Forward only: (T-batched params, x (T, B, C, H, W)) -> logits (T, B, classes)."""
        parts = self._parts(x)
        if parts == 1:
            return convnet.logits(params, x, self.spec)
        futures = [
            _pool(parts).submit(
                convnet.logits, {k: v[s] for k, v in params.items()}, x[s], self.spec
            )
            for s in _chunks(x.shape[0], parts)
        ]
        return torch.cat([f.result() for f in futures])


def _adam_step(opt, t: int, p: Tensor, g: Tensor, m: Tensor, v: Tensor, denom: Tensor) -> None:
    """`inner_optim.Adam.step` in place on flat buffers, the same ops in the same order:
    m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2; p -= lr/(1 - b1^t) m / (sqrt(v)/sqrt(1 - b2^t)
    + eps). With b1 = 0, lerp(m, g, 1) is exactly g: g is used and the caller stores the last."""
    step_size = opt.lr / (1 - opt.beta1**t)
    bias_correction2_sqrt = math.sqrt(1 - opt.beta2**t)
    if opt.beta1 == 0.0:
        m = g
    else:
        m.lerp_(g, 1 - opt.beta1)
    v.mul_(opt.beta2).addcmul_(g, g, value=1 - opt.beta2)
    torch.sqrt(v, out=denom).div_(bias_correction2_sqrt).add_(opt.eps)
    p.addcdiv_(m, denom, value=-step_size)


def spec_for(module: nn.Module) -> ConvNetSpec | None:
    """The `ConvNetSpec` of a paper conv net (`FourBlockNet` and its `OmniglotNet` /
    `MiniImageNetNet`, any filters / classes / input channels), else None.

    Only these exact classes (and exact `ConvBlock`s of 3x3 convs) qualify: a subclass may change
    `forward`, which the oracle would silently ignore.
    """
    if type(module) not in (FourBlockNet, OmniglotNet, MiniImageNetNet):
        return None
    blocks = list(module.blocks)
    if not blocks or any(type(b) is not ConvBlock for b in blocks):
        return None
    first = blocks[0]
    stride, pool = first.conv.stride[0], isinstance(first.pool, nn.MaxPool2d)
    for b in blocks:
        if (
            b.conv.kernel_size != (3, 3)
            or b.conv.stride != (stride, stride)
            or b.conv.padding != (0, 0)
            or b.conv.dilation != (1, 1)
            or b.conv.groups != 1
            or isinstance(b.pool, nn.MaxPool2d) != pool
            or b.norm.track_running_stats
        ):
            return None
    return ConvNetSpec(stride=stride, pool=pool, layers=len(blocks), eps=first.norm.eps)


def fast_loss_and_grad_for(
    module: nn.Module, workers: int | None = None
) -> Callable[[Params, Tensor, Tensor], tuple[Tensor, Params]] | None:
    """The fast batched oracle if `module` is an `OmniglotNet`/`MiniImageNetNet`, else None."""
    spec = spec_for(module)
    return None if spec is None else ConvNetOracle(spec, workers)


def fast_logits_for(
    module: nn.Module, workers: int | None = None
) -> Callable[[Params, Tensor], Tensor] | None:
    """The fast batched forward `(params, x (T, B, ...)) -> (T, B, classes)`, or None."""
    spec = spec_for(module)
    return None if spec is None else ConvNetOracle(spec, workers).logits
