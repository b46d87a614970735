"""What one meeting of the fast kernels' workers costs (`reptorch.fast.comm`), in microseconds.

    python -m bench.meetings [--meetings 2000]

Two workers (the fast oracle's thread pool) each run a scripted loop of allreduces of a
(1, 1, 64) tensor, BatchNorm's per-channel sums, through either kind of meeting: Python's (a
call from TorchScript back into Python, the GIL, a `threading.Barrier`) or the native ops
(atomics, no GIL). A step of the image-split chain holds about a dozen meetings (two allreduces
per layer forward, one backward, and the barriers around the optimiser step), so this figure
x 14 is what splitting a step must save.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from reptorch.fast import comm
from reptorch.fast.kernel import _allreduce
from reptorch.fast.oracle import _pool


@torch.jit.script
def _meet(group: int, rank: int, meetings: int, value: Tensor) -> Tensor:
    total = value
    for _ in range(meetings):
        total = _allreduce(group, rank, value)
    return total


def _native_meet() -> torch.jit.ScriptFunction:
    def meet(group: int, rank: int, meetings: int, value: Tensor) -> Tensor:
        total = value
        for _ in range(meetings):
            total = torch.ops.reptorch_comm.allreduce(group, rank, value)
        return total

    return torch.jit.script(meet)


def meeting_us(meetings: int, native: bool, workers: int = 2) -> float:
    """Wall time per meeting of `workers` threads meeting `meetings` times."""
    value = torch.ones(1, 1, 64)
    meet = _native_meet() if native else _meet
    with comm.Group(workers, native) as group:
        pool = _pool(workers)
        for f in [pool.submit(meet, group.id, r, 10, value) for r in range(workers)]:
            f.result()  # warm-up: scripting, thread start
        start = time.perf_counter()
        for f in [pool.submit(meet, group.id, r, meetings, value) for r in range(workers)]:
            f.result()
        return (time.perf_counter() - start) / meetings * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    kinds = {"python": False, "native": True} if comm.native() else {"python": False}
    for kind, native in kinds.items():
        times = [meeting_us(args.meetings, native) for _ in range(args.repeats)]
        print(
            f"{kind} meetings, 2 workers: {statistics.median(times):.1f} us per meeting (median "
            f"of {args.repeats} x {args.meetings}; min {min(times):.1f}); x 14 meetings = "
            f"{14 * statistics.median(times) / 1e3:.3f} ms per inner step"
        )


if __name__ == "__main__":
    main()
