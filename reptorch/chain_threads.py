"""How the exact sequential chain (`parallel='loop'` on a CPU) uses the cores.

The reference threads one inner Adam state through the tasks of a meta-batch in order, so a
meta-iteration is one chain of dependent inner steps; the cores can only share work inside a step.
By default the chain runs single-threaded and the interval evaluations take a second thread
beside it: the trajectory is then the same on any machine, and steady when other jobs share the
cores. `chain_threads` > 1 gives the chain that many intra-op threads instead (the evaluations
then run in turn with it). On an otherwise idle 2-core machine the bare meta-iteration runs ~1.5x
faster, a whole training run 1.0-1.25x; beside one busy process ~2.5x slower (OpenMP barriers
wait for a descheduled thread); and float rounding, hence the trajectory, then depends on the
thread count (`bench/chain_threads.py`, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from reptorch.errors import ConfigError


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
