"""Meeting points for worker threads that split one batch of images between them.

BatchNorm normalises with the statistics of a task's whole mini-batch, so workers that each hold a
share of the images exchange per-channel sums once per layer and direction (`allreduce`), and meet
(`barrier`) around the optimiser step. Every worker adds the shares in rank order, so all of them
get bitwise the same sum. A group is known by an integer id because the TorchScript kernel can
pass ints, not Python objects, to these functions.

Two implementations with one contract:
- native (`csrc/comm.cpp`, ops `torch.ops.reptorch_comm.*`): spin-then-yield barriers on atomics,
  called from the scripted kernel without the GIL, ~1-2 us a meeting; compiled on first use with
  `torch.utils.cpp_extension` (g++ and ninja; cached under ~/.cache/torch_extensions);
- Python (`Group`): a call from TorchScript back into Python and a `threading.Barrier`, tens of
  us a meeting (`bench/meetings.py`); used where no compiler is found, or with
  `REPTORCH_NO_NATIVE_COMM=1`.
"""

from __future__ import annotations

import itertools
import threading

import torch
from torch import Tensor

from reptorch.fast.native import load

_GROUPS: dict[int, Group] = {}
_IDS = itertools.count()


def native() -> bool:
    """Whether the native meeting ops are loaded (compiled on the first call; False, said once,
    where they cannot be built)."""
    return load("reptorch_comm", "allreduce", "REPTORCH_NO_NATIVE_COMM")


class Group:
    """`size` threads that reduce and wait together; `abort()` releases them all with an error.

    `native=True` makes the group in the native ops' registry (its `id` is theirs)."""

    def __init__(self, size: int, native: bool = False) -> None:
        self.size = size
        self.native = native
        self._barrier = threading.Barrier(size)
        # Two slot sets used alternately: a worker writes set g again only after the next
        # barrier, which every worker reaches only after it has read set g.
        self._slots: list[list[Tensor | None]] = [[None] * size, [None] * size]
        self._turn = [0] * size
        self.id = torch.ops.reptorch_comm.open(size) if native else next(_IDS)

    def __enter__(self) -> Group:
        if not self.native:
            _GROUPS[self.id] = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self.native:
            torch.ops.reptorch_comm.close(self.id)
        else:
            _GROUPS.pop(self.id, None)

    def wait(self) -> None:
        self._barrier.wait()

    def abort(self) -> None:
        if self.native:
            torch.ops.reptorch_comm.abort(self.id)
        else:
            self._barrier.abort()

    def allreduce(self, rank: int, value: Tensor) -> Tensor:
        """The sum of every worker's `value`, in rank order."""
        slots = self._slots[self._turn[rank]]
        self._turn[rank] ^= 1
        slots[rank] = value
        self._barrier.wait()
        total = slots[0].clone()
        for other in slots[1:]:
            total.add_(other)
        return total


ABORTED = "a worker of this group failed"  # the native ops' error (csrc/comm.cpp)


def released(error: BaseException) -> bool:
    """Whether `error` only says that another worker of the group failed (it was released from
    a meeting by `abort`), not what went wrong. Raised inside the scripted kernel, either comes
    wrapped in a RuntimeError that quotes it."""
    return "BrokenBarrier" in repr(error) or ABORTED in str(error)


def allreduce(group: int, rank: int, value: Tensor) -> Tensor:
    return _GROUPS[group].allreduce(rank, value)


def barrier(group: int) -> None:
    _GROUPS[group].wait()
