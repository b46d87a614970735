"""Meeting points for worker threads that split one batch of images between them.

BatchNorm normalises with the statistics of a task's whole mini-batch, so workers that each hold a
share of the images exchange per-channel sums once per layer and direction (`allreduce`), and meet
(`barrier`) around the optimiser step. Every worker adds the shares in rank order, so all of them
get bitwise the same sum. A `Group` is registered under an integer id because the TorchScript
kernel can pass ints, not Python objects, to these functions.
"""

from __future__ import annotations

import itertools
import threading

from torch import Tensor

_GROUPS: dict[int, Group] = {}
_IDS = itertools.count()


class Group:
    """`size` threads that reduce and wait together; `abort()` releases them all with an error."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._barrier = threading.Barrier(size)
        # Two slot sets used alternately: a worker writes set g again only after the next
        # barrier, which every worker reaches only after it has read set g.
        self._slots: list[list[Tensor | None]] = [[None] * size, [None] * size]
        self._turn = [0] * size
        self.id = next(_IDS)

    def __enter__(self) -> Group:
        _GROUPS[self.id] = self
        return self

    def __exit__(self, *exc: object) -> None:
        _GROUPS.pop(self.id, None)

    def wait(self) -> None:
        self._barrier.wait()

    def abort(self) -> None:
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


def allreduce(group: int, rank: int, value: Tensor) -> Tensor:
    return _GROUPS[group].allreduce(rank, value)


def barrier(group: int) -> None:
    _GROUPS[group].wait()
