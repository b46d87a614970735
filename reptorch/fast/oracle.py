"""Task-parallel gradient oracle for the paper's conv nets, with the core's batched-oracle contract.

`oracle(params, x, y) -> (loss (T,), grads)`: params carry a leading task dim T, x is
(T, B, C, H, W) float, y is (T, B) int64; every task has its own parameters and BatchNorm batch
statistics. Equal,
to float rounding, to `FunctionalModel(net).batched_loss_and_grad()` (a vmapped autograd oracle).

On CPU the T tasks are split into contiguous chunks run by `workers` single-threaded threads
(PyTorch releases the GIL inside kernels). The per-layer kernels are too small for intra-op
threading to keep two cores busy (measured: 2 intra-op threads gave ~1.5x over 1, two
single-threaded workers ~1.7x, and far less slowdown when another process holds a core, since no
OpenMP barrier waits on a descheduled thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from reptorch.fast import convnet
from reptorch.fast.convnet import MINIIMAGENET, OMNIGLOT, ConvNetSpec, Params
from reptorch.models import MiniImageNetNet, OmniglotNet

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
        slices = _chunks(x.shape[0], parts)
        futures = [
            _pool(parts).submit(
                convnet.loss_and_grad, {k: v[s] for k, v in params.items()}, x[s], y[s], self.spec
            )
            for s in slices
        ]
        results = [f.result() for f in futures]
        loss = torch.cat([r[0] for r in results])
        grads = {k: torch.cat([r[1][k] for r in results]) for k in params}
        return loss, grads

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


def spec_for(module: nn.Module) -> ConvNetSpec | None:
    """The `ConvNetSpec` of a paper conv net (any filters / classes / input channels), else None.

    Only the exact classes qualify: a subclass may change `forward`, which the oracle would ignore.
    """
    if type(module) is OmniglotNet:
        return OMNIGLOT
    if type(module) is MiniImageNetNet:
        return MINIIMAGENET
    return None


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
