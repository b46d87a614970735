"""Task-parallel gradient oracle for the paper's conv nets, with the core's batched-oracle contract.

`oracle(params, x, y) -> (loss (T,), grads)`: params carry a leading task dim T, x is
(T, B, C, H, W) float, y is (T, B) int64; every task has its own parameters and BatchNorm batch
statistics. Equal, to float rounding, to `FunctionalModel(net).vmap_loss_and_grad()` (the
vmapped autograd oracle).

On CPU the work is shared by `workers` single-threaded threads, each running a TorchScript kernel
(`reptorch.fast.kernel`) that releases the GIL for a whole step. The per-layer ops are too small
for intra-op threading to keep two cores busy, and OpenMP barriers stall whenever another process
holds a core. Two ways to share (`ConvNetOracle.plan`):
- by tasks: many small independent items (a few tasks each, all k steps), taken from a queue, so
  the load balances and each item's buffers stay in cache (evaluation: hundreds of tasks);
- by images: every worker takes its share of every task's mini-batch, and the workers sum
  BatchNorm statistics and gradients (`reptorch.fast.comm`), for when whole tasks would leave
  cores idle much longer (one task; fewer tasks than cores). For the paper's 5 tasks on 2 cores
  the 3/2 split of whole tasks measured faster than these dozen meetings per step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from reptorch.adapt import AdaptResult
from reptorch.fast import comm, convnet, fused
from reptorch.fast.chain import adapt_chain
from reptorch.fast.convnet import ConvNetSpec, Params
from reptorch.fast.cores import FREE_CORES
from reptorch.fast.flat import FlatLayout, from_gemm_views, to_gemm
from reptorch.inner_optim import SGD, Adam, AdamState, SGDState
from reptorch.losses import LOSS_REDUCTIONS
from reptorch.models import ConvBlock, FourBlockNet, MiniImageNetNet, OmniglotNet

ITEM_TASKS = 5  # tasks per work item when sharing by tasks, im2col nets (docs/benchmarks.md)
# PyTorch's convolutions loop over a work item's tasks anyway; one task per item keeps its
# activations in cache: Mini-ImageNet evaluation 1.85-2.04 against 1.38-1.56 tasks/s with 5
NATIVE_ITEM_TASKS = 1
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_GROUP_LOCK = threading.Lock()


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

    workers: CPU threads sharing the work; None means `torch.get_num_threads()` of the caller
    (1 runs in the caller's thread with its own intra-op threading). CUDA inputs always run in one
    call (the GPU is already parallel over tasks).
    item_tasks: tasks per work item when sharing by tasks (None: `ITEM_TASKS` for the im2col
    nets, `NATIVE_ITEM_TASKS` for those on PyTorch's convolutions).
    reduction: the softmax cross-entropy's over a mini-batch, 'mean' or 'sum' (the reference's;
    `reptorch.losses`).
    threads: when a step's images are split into S slices, how many threads run them (S or 1;
    the same bits either way): by default the cores other processes leave free
    (`reptorch.fast.cores`).
    """

    def __init__(
        self,
        spec: ConvNetSpec,
        workers: int | None = None,
        item_tasks: int | None = None,
        reduction: str = "mean",
        threads: Callable[[int], int] | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.spec = spec
        self.workers = workers
        if item_tasks is None:
            item_tasks = NATIVE_ITEM_TASKS if spec.native_convolutions() else ITEM_TASKS
        self.item_tasks = item_tasks
        self.threads = threads if threads is not None else FREE_CORES.threads
        self.last_threads = 0  # the threads that ran the last image-split inner loop
        self._names = spec.names()
        self._buffers: dict[str, Tensor] = {}
        self._busy = threading.Lock()

    def _scratch(self, key: str, like: Tensor) -> Tensor:
        """An uninitialised buffer like `like`, reused by later calls: fresh multi-MiB buffers
        cost a page fault per 4 KiB on first touch (~10% of a meta-iteration, measured)."""
        buf = self._buffers.get(key)
        if (
            buf is None
            or buf.numel() < like.numel()
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = self._buffers[key] = torch.empty_like(like).view(-1)
        return buf[: like.numel()].view(like.shape)

    def _workers(self, x: Tensor) -> int:
        if x.device.type != "cpu":
            return 1
        return self.workers if self.workers is not None else torch.get_num_threads()

    def plan(self, tasks: int, batch: int, workers: int) -> tuple[str, int]:
        """('tasks', tasks per item) or ('images', workers splitting each batch).

        Sharing by images costs a dozen meetings per step and smaller GEMMs (measured on 2 cores,
        5 tasks x 10 images: 61 ms per meta-iteration vs 55 ms for a 3/2 split of whole tasks),
        so it is used only when it cuts the largest share by a quarter or more: T ceil(B/W) <=
        0.75 ceil(T/W) B, e.g. one task, or fewer tasks than cores.
        """
        if workers <= 1:
            return "tasks", tasks
        by_tasks = -(-tasks // workers) * batch
        by_images = tasks * -(-batch // workers)
        if batch >= 2 and 4 * by_images <= 3 * by_tasks:
            return "images", min(workers, batch)
        return "tasks", max(1, min(self.item_tasks, -(-tasks // workers)))

    def _map(self, fn: Callable[[slice], None], tasks: int, per_item: int, workers: int) -> None:
        items = [slice(i, min(i + per_item, tasks)) for i in range(0, tasks, per_item)]
        if workers <= 1 or len(items) == 1:
            for s in items:
                fn(s)
            return
        for future in [_pool(workers).submit(fn, s) for s in items]:
            future.result()

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Params]:
        tasks, workers = x.shape[0], self._workers(x)
        loss = x.new_empty(tasks)
        grads = {k: x.new_empty(tasks, *v.shape[1:]) for k, v in params.items()}

        def run(s: slice) -> None:
            out = {k: v[s] for k, v in grads.items()}
            part = {k: v[s] for k, v in params.items()}
            loss[s] = convnet.loss_and_grad(
                part, x[s], y[s], self.spec, out=out, reduction=self.reduction
            )[0]

        self._map(run, tasks, -(-tasks // workers), workers)
        return loss, grads

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """Forward only: (T-batched params, x (T, B, C, H, W)) -> logits (T, B, classes)."""
        tasks, workers = x.shape[0], self._workers(x)
        out: list[Tensor | None] = [None] * tasks

        def run(s: slice) -> None:
            out[s.start] = convnet.logits({k: v[s] for k, v in params.items()}, x[s], self.spec)

        mode, share = self.plan(tasks, x.shape[1], workers)
        per_item = share if mode == "tasks" else -(-tasks // workers)
        self._map(run, tasks, per_item, workers)
        return torch.cat([o for o in out if o is not None])

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
        Params, gradients and Adam moments live in flat (T, P) buffers (`FlatLayout`, conv weights
        in GEMM layout), so an optimiser step is a few elementwise ops in place, in the order of
        `Adam.step`. Returns `AdaptResult(params, state (T-batched), losses (T, k))`.
        """
        if not isinstance(optimizer, (Adam, SGD)):
            return None
        batches = list(batches)
        if not batches:
            return None
        x0 = batches[0][0]
        tasks, batch = x0.shape[0], x0.shape[1]
        is_adam = isinstance(optimizer, Adam)
        with torch.no_grad():
            gemm_params = {k: to_gemm(k, v, batched=True) for k, v in params.items()}
            layout = FlatLayout.of(gemm_params, batched=True)
            sources = [gemm_params]
            if is_adam:
                moments = (state.exp_avg, state.exp_avg_sq)
                sources += [{k: to_gemm(k, v) for k, v in tree.items()} for tree in moments]
            hyper = self.hyper(optimizer, weight_decay, batch)
            # params, exp_avg, exp_avg_sq; filled by the workers, each its own rows
            buffers = [x0.new_empty(tasks, layout.size) for _ in sources]
            flat, m, v = buffers if is_adam else (buffers[0], None, None)

            def fill(rows: slice) -> None:
                for buffer, source in zip(buffers, sources):
                    layout.fill(buffer[rows], source, rows)

            xs = [x for x, _ in batches]
            ys = [y for _, y in batches]
            workers = self._workers(x0)
            mode, share = self.plan(tasks, batch, workers)
            if mode == "images":
                fill(slice(None))
            if m is None:
                m = v = flat[:, :0]  # unused by SGD
            with self._busy:  # the scratch buffers are this oracle's: one adapt at a time
                if mode == "images":
                    losses = self._adapt_by_images(
                        layout, flat, m, v, xs, ys, hyper, state.step, share
                    )
                else:
                    losses = self._adapt_by_tasks(
                        layout, flat, m, v, xs, ys, hyper, state.step, share, fill
                    )
        steps = state.step + len(batches)
        new_params = from_gemm_views(layout, flat)
        if is_adam:
            new_state = AdamState(steps, from_gemm_views(layout, m), from_gemm_views(layout, v))
        else:
            new_state = SGDState(steps)
        # the kernels write a step's losses as a row; tasks are rows at every boundary
        return AdaptResult(new_params, new_state, losses.transpose(0, 1).contiguous())

    def hyper(self, optimizer: Adam | SGD, weight_decay: float, batch: int) -> list[float]:
        """The inner loop's settings as the kernel takes them (`InnerLoopKernel.adapt`): [adam
        (0/1), lr, beta1, beta2, eps, weight_decay, loss divisor (the batch for the mean)]."""
        if isinstance(optimizer, Adam):
            hyper = [1.0, optimizer.lr, optimizer.beta1, optimizer.beta2, optimizer.eps]
        else:
            hyper = [0.0, optimizer.lr, 0.0, 0.0, 0.0]
        return [*hyper, float(weight_decay), float(batch) if self.reduction == "mean" else 1.0]

    def chain(self, phi: Params, xs: Tensor, ys: Tensor, optimizer: object, state: object, *,
              weight_decay: float = 1.0):  # fmt: skip
        """The exact chain of T tasks (xs (T, k, B, ...)), each from phi, the inner state
        threaded through them, on flat buffers: ([W_i], last state, losses (T, k)) or None
        (`reptorch.fast.chain`)."""
        return adapt_chain(self, phi, xs, ys, optimizer, state, weight_decay)

    def _in_kernel_order(self, layout: FlatLayout, buffer: Tensor) -> list[Tensor]:
        """The per-parameter views of a flat buffer, in the kernel's parameter order."""
        views = layout.views(buffer)
        return [views[k] for k in self._names]

    def _adapt_by_tasks(self, layout, flat, m, v, xs, ys, hyper, step0, per_item, fill) -> Tensor:
        tasks = flat.shape[0]
        losses = flat.new_empty(len(xs), tasks)
        grad, denom = self._scratch("grad", flat), self._scratch("denom", flat)

        def run(s: slice) -> None:
            with torch.no_grad():
                fill(s)  # in the worker: its rows, in parallel, just before use
                p, g = flat[s], grad[s]
                params, grads = self._in_kernel_order(layout, p), self._in_kernel_order(layout, g)
                convnet.kernel(self.spec).adapt(
                    params, [grads], p, [g], g, m[s], v[s], denom[s],
                    [[x[s]] for x in xs], [[y[s]] for y in ys], [losses[:, s]],
                    hyper, step0, -1, 0, 0, xs[0].shape[1], [0, p.shape[1]],
                )  # fmt: skip

        self._map(run, tasks, per_item, self._workers(xs[0]))
        return losses

    def _adapt_by_images(self, layout, flat, m, v, xs, ys, hyper, step0, size) -> Tensor:
        """Every step's images cut into `size` slices, run by `size` workers (one slice each)
        or, where other processes hold cores (`self.threads`), by one taking them in turn:
        the same float operations either way (`reptorch.fast.kernel`)."""
        tasks, width = flat.shape
        batch = xs[0].shape[1]
        partials = [self._scratch(f"partial{rank}", flat) for rank in range(size)]
        total, denom = self._scratch("total", flat), self._scratch("denom", flat)
        losses = [flat.new_empty(len(xs), tasks) for _ in range(size)]
        params = self._in_kernel_order(layout, flat)
        grads = [self._in_kernel_order(layout, partial) for partial in partials]
        images = _chunks(batch, size)
        columns = []  # 64-byte aligned column shares, [lo, hi] per slice
        for share in _chunks(-(-width // 16), size):
            columns.append([min(16 * share.start, width), min(16 * share.stop, width)])
        x_slices = [[x[:, s] for s in images] for x in xs]
        y_slices = [[y[:, s] for s in images] for y in ys]

        def run(first: int, count: int, group: int, rank: int, native: bool) -> None:
            ours = slice(first, first + count)
            with torch.no_grad():
                convnet.kernel(self.spec, native).adapt(
                    params, grads[ours], flat, partials, total, m, v, denom,
                    [x[ours] for x in x_slices], [y[ours] for y in y_slices], losses[ours],
                    hyper, step0, group, rank, first, batch,
                    [c for pair in columns[ours] for c in pair],
                )  # fmt: skip

        self.last_threads = self.threads(size)
        if self.last_threads == 1:  # in this thread: a pool thread measured ~5% slower
            before = torch.get_num_threads()
            torch.set_num_threads(1)  # as the pool's workers: same bits, no OpenMP waits
            try:
                run(0, size, -1, 0, False)
            finally:
                torch.set_num_threads(before)
            return torch.stack(losses).sum(0)

        native = comm.native()

        def member(rank: int, group: comm.Group) -> None:
            try:
                run(rank, 1, group.id, rank, native)
            except BaseException:
                group.abort()  # release the others from their barriers
                raise

        # One group at a time per process: two groups sharing the pool could each hold a thread
        # while waiting for a member queued behind the other's (a deadlock).
        with _GROUP_LOCK, comm.Group(size, native) as group:
            futures = [_pool(size).submit(member, rank, group) for rank in range(size)]
            errors = [f.exception() for f in futures]
        real = [e for e in errors if e is not None and not comm.released(e)]
        if real or any(errors):
            raise (real or [e for e in errors if e is not None])[0]
        return torch.stack(losses).sum(0)


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
    on_fused = fused.selected() == "fused"  # the process's passes (`reptorch.fast.fused`)
    return ConvNetSpec(
        stride=stride, pool=pool, layers=len(blocks), eps=first.norm.eps, fused=on_fused
    )


def fast_loss_and_grad_for(
    module: nn.Module, workers: int | None = None, reduction: str = "mean"
) -> Callable[[Params, Tensor, Tensor], tuple[Tensor, Params]] | None:
    """The fast batched oracle if `module` is an `OmniglotNet`/`MiniImageNetNet`, else None."""
    spec = spec_for(module)
    return None if spec is None else ConvNetOracle(spec, workers, reduction=reduction)


def fast_logits_for(
    module: nn.Module, workers: int | None = None
) -> Callable[[Params, Tensor], Tensor] | None:
    """The fast batched forward `(params, x (T, B, ...)) -> (T, B, classes)`, or None."""
    spec = spec_for(module)
    return None if spec is None else ConvNetOracle(spec, workers).logits
