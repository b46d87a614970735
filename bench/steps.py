"""The paper's meta-training settings and the training steps the benchmarks time.

A `Setting` is one row of the paper's hyperparameters (Appendix A); `reptorch_step` is the
library's public step for it (exact chain, merged or vmap), `baseline_step` what a user would
write (`bench.baseline`), both on synthetic tensors of the right shapes (sampling excluded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch

from bench.baseline import SerialReptile
from bench.gemm import conv_net_forward_flops
from reptorch.algorithms.reptile import Reptile
from reptorch.chain_threads import resolve_chain_workers
from reptorch.fast import fused
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.losses import cross_entropy_sum
from reptorch.meta import MetaLearner
from reptorch.models import MiniImageNetNet, OmniglotNet
from reptorch.outer import Interpolation
from reptorch.run.setup import resolve_kernels

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    """Meta-training settings of the paper (docs/paper-reference.md, section 4 and Appendix A)."""

    name: str
    ways: int
    inner_batch: int
    inner_iters: int
    lr: float
    meta_batch: int = 5
    dataset: str = "omniglot"

    @property
    def image(self) -> tuple[int, int, int]:
        return (3, 84, 84) if self.dataset == "miniimagenet" else (1, 28, 28)

    def network(self) -> torch.nn.Module:
        return (MiniImageNetNet if self.dataset == "miniimagenet" else OmniglotNet)(self.ways)

    @property
    def flops(self) -> float:
        """FLOP of one meta-iteration (forward + backward ~ 3 x forward per image)."""
        channels, side, _ = self.image
        stride, pool = (1, True) if self.dataset == "miniimagenet" else (2, False)
        filters = 32 if self.dataset == "miniimagenet" else 64
        per_image = 3 * conv_net_forward_flops(side, channels, filters, self.ways, stride, pool)
        return per_image * self.meta_batch * self.inner_iters * self.inner_batch


SETTINGS = [
    Setting("Omniglot 5w1s", 5, 10, 5, 1e-3),
    Setting("Omniglot 5w5s", 5, 10, 5, 1e-3),  # training is identical to 5w1s (shots: eval only)
    Setting("Omniglot 20w1s", 20, 20, 10, 5e-4),
    # 1-shot and 5-shot train alike (train shots 15, inner batch 10, 8 steps, Adam 1e-3)
    Setting("Mini-ImageNet 5w1s", 5, 10, 8, 1e-3, dataset="miniimagenet"),
]


def synthetic_batches(s: Setting, count: int, device: torch.device, seed: int = 0):
    """`count` meta-batches xs (T, k, B, C, H, W) in [0, 1], ys (T, k, B) in [0, ways):
    Omniglot's binary ink, Mini-ImageNet's uniform colours."""
    gen = torch.Generator().manual_seed(seed)
    shape = (count, s.meta_batch, s.inner_iters, s.inner_batch)
    xs = torch.rand(*shape, *s.image, generator=gen)
    if s.dataset == "omniglot":
        xs = (xs > 0.2).float()
    ys = torch.randint(0, s.ways, shape, generator=gen)
    return xs.to(device), ys.to(device)


def batches_for(s: Setting) -> int:
    """Synthetic meta-batches cycled through: 4, or 2 of Mini-ImageNet's 135 MB ones."""
    return 2 if s.dataset == "miniimagenet" else 4


def reptorch_step(
    s: Setting,
    device: torch.device,
    mode: str = "library",
    chain_workers: int = 0,
    threads: int = 1,
    slice_threads: int | None = None,
    kernels: str = "",
) -> Callable[[int], None]:
    """The library's training step: `MetaLearner` + `Reptile` + inner `Adam`.

    mode: 'library' (the `reptorch.fast` oracle with its own inner loop, the tasks of a
    meta-batch side by side from one merged inner state), 'exact' (the reference's semantics,
    `parallel='loop'`: the tasks in sequence threading one inner Adam state, its steps split
    over `chain_workers` workers, 0: the default `reptorch train` chooses), 'vmap' (the generic
    `vmap(grad_and_value)` oracle in the core's inner loop). The reference's summed loss.
    The exact step runs with `threads` intra-op threads, as `reptorch train` runs its chain
    (1; `--chain-threads N`: N). `slice_threads`: the threads running the step's image slices,
    whatever other processes hold (None: they follow the free cores, the default; the slice
    count: one worker per slice always, the only way before 2026-12-06). `kernels`: the blocks'
    passes ("": what `reptorch train` chooses; "aten" or "fused").
    """
    torch.manual_seed(0)
    net = s.network().to(device)
    model = FunctionalModel(net, cross_entropy_sum)
    workers = None
    if mode == "exact":
        workers = resolve_chain_workers(chain_workers, net, True, images=s.inner_batch)
    fused.select(resolve_kernels(kernels, net, str(device)))  # the oracle takes it from its spec
    oracle = model.batched_loss_and_grad(fast=mode != "vmap", workers=workers)
    fused.select("aten")
    if slice_threads is not None:
        oracle.threads = lambda slices: slice_threads
    parallel = "loop" if mode == "exact" else "vmap"
    algorithm = Reptile(model, Adam(s.lr), parallel=parallel, batched_loss_and_grad=oracle)
    learner = MetaLearner(algorithm, Interpolation(1.0, 0.0, 100_000), model.init_params())
    count = batches_for(s)
    xs, ys = synthetic_batches(s, count, device)
    step = partial(_step, learner, xs, ys, count)
    return with_threads(step, threads) if mode == "exact" else step


def _step(learner: MetaLearner, xs: torch.Tensor, ys: torch.Tensor, count: int, i: int) -> None:
    learner.step(xs[i % count], ys[i % count])


def baseline_step(s: Setting, device: torch.device) -> Callable[[int], None]:
    """What a user would write: one `nn.Module` on PyTorch's own convolutions (all threads)."""
    torch.manual_seed(0)
    learner = SerialReptile(s.network().to(device), s.lr)
    count = batches_for(s)
    xs, ys = synthetic_batches(s, count, device)
    return lambda i: learner.step(xs[i % count], ys[i % count])


def key(s: Setting) -> str:
    """The setting's name on the command lines: 5w1s, 5w5s, 20w1s or mini."""
    return "mini" if s.dataset == "miniimagenet" else s.name.split()[-1]


def with_threads(fn: Callable[..., T], threads: int) -> Callable[..., T]:
    """`fn` with `threads` OpenMP intra-op threads in the calling thread, then put back."""

    def run(*args: Any) -> T:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)

    return run
