"""How the exact sequential chain (`parallel='loop'` on a CPU) uses the cores.

The reference threads one inner Adam state through the tasks of a meta-batch in order, so a
meta-iteration is one chain of dependent inner steps; the cores can only share work inside a step.
Two ways to share it:

- `chain_workers` W > 1 (the default where it pays): every step's images are cut into W fixed
  slices (`reptorch.fast.kernel`), run by the fast kernels' own single-threaded workers, one
  slice each, meeting a dozen times per step to sum BatchNorm statistics and gradients
  (`reptorch.fast.comm`) — or, while other processes hold cores, by one worker taking the slices
  in turn (`reptorch.fast.cores` measures the free cores as the run goes). Both do the same
  float operations, so the thread count follows the load without changing a bit: beside a busy
  process the chain runs as fast as on one worker, on idle cores at the split's speed. Chosen
  automatically (`resolve_chain_workers`) where the steps are long enough that the meetings
  (~1-8 us each with the native ops) cost little: Mini-ImageNet's, and Omniglot's with 20
  images a step; Omniglot's 10-image steps stay whole, with the interval evaluations on a
  second thread beside the chain.
  Float rounding (the order of the partial sums), hence the trajectory, depends on W alone: a
  run records W in its config.json, and `chain_workers=1` gives the unsplit trajectory.
- `chain_threads` > 1: the chain gets that many intra-op (OpenMP) threads. On an otherwise idle
  2-core machine the bare meta-iteration runs ~1.5x faster, a whole training run 1.0-1.25x;
  beside one busy process ~2.5x slower (OpenMP barriers spin for a descheduled thread)
  (`bench/chain_threads.py`, docs/benchmarks.md). Opt-in only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from reptorch.errors import ConfigError
from reptorch.fast import spec_for


def check_chain_threads(chain_threads: int, sequential: bool) -> int | None:
    """The intra-op threads the training loop runs with: `chain_threads` for the exact
    sequential chain, None (the caller's) for any other mode, where the option is a mistake."""
    if chain_threads < 1:
        raise ConfigError(f"chain_threads={chain_threads}: give 1 or more threads")
    if sequential:
        return chain_threads
    if chain_threads != 1:
        raise ConfigError(
            f"chain_threads={chain_threads} applies to the exact sequential chain "
            f"(--parallel loop on a CPU) only: drop it, or train with --parallel loop"
        )
    return None


def cpu_threads() -> int:
    """Runs this thread's torch ops single-threaded; returns the thread count it had.

    The fast oracle splits tasks over that many single-threaded workers instead. Intra-op
    threads on these small tensors wait at OpenMP barriers whenever another process holds a
    core: measured 13x slower training and 80x slower single-task evaluation on 2 shared cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def free_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity masks
        return max(1, os.cpu_count() or 1)


SPLIT_IMAGES = 20  # Omniglot steps of this many images or more gain from splitting (measured)


def resolve_chain_workers(
    requested: int,
    module: torch.nn.Module,
    sequential: bool,
    chain_threads: int = 1,
    images: int = SPLIT_IMAGES,
) -> int:
    """The workers that split each step (of `images` images) of the exact chain: `requested`
    if > 0; for 0 (auto), the free cores where splitting measured faster (docs/benchmarks.md):
    Mini-ImageNet's network (PyTorch's convolutions, ~40 ms steps; 2.3x on 2 cores), and
    Omniglot's with 20 images a step or more (20-way: 1.3x); else 1 (Omniglot's 10-image steps
    of ~3 ms: break-even, so the second core scores the interval evaluations instead)."""
    spec = spec_for(module)
    if requested == 0:
        if not sequential or chain_threads != 1 or spec is None:
            return 1
        split = spec.native_convolutions() or images >= SPLIT_IMAGES
        return free_cores() if split else 1
    if requested > 1:
        if not sequential:
            raise ConfigError(
                f"chain_workers={requested} applies to the exact sequential chain (--parallel "
                f"loop on a CPU) only: drop it, or train with --parallel loop"
            )
        if spec is None:
            raise ConfigError(
                f"chain_workers={requested}: only the paper's conv nets (the fast kernels) "
                f"split a step over workers; give 1"
            )
        if chain_threads != 1:
            raise ConfigError(
                f"chain_workers={requested} with chain_threads={chain_threads}: choose one way "
                f"to share the chain's steps"
            )
    return requested


def background_thread(beside_chain: bool) -> ThreadPoolExecutor | None:
    """The single-threaded worker that scores interval evaluations beside a single-threaded
    chain, or None (score them in turn). Only `reptorch.fast`'s kernels may run there: torch.func
    transforms in two threads at once corrupt each other (`FunctionalModel.has_fast_path`)."""
    return ThreadPoolExecutor(1, initializer=_one_thread) if beside_chain else None


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """This thread's torch intra-op thread count set to `threads` (None: left alone), then put
    back."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread() -> None:
    torch.set_num_threads(1)  # this thread's ops; the caller's are unaffected
