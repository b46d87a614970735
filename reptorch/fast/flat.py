"""Flat-parameter representation: every parameter of T tasks as a view into one (T, P) buffer.

With params, gradients and optimiser moments each in one contiguous buffer, an inner optimiser
step is a handful of elementwise ops over (T, P) instead of a few ops per parameter tensor, and a
chunk of tasks is a row slice. `FlatLayout` maps names to column ranges in the tree's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

Params = dict[str, Tensor]


@dataclass(frozen=True)
class FlatLayout:
    """Name -> (offset, shape) of each parameter inside a row of P = sum of numels."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @staticmethod
    def of(tree: Params, batched: bool = False) -> FlatLayout:
        """Layout of a tree (per-task shapes; `batched` drops a leading task dim)."""
        names, shapes, offsets, total = [], [], [], 0
        for name, value in tree.items():
            shape = tuple(value.shape[1:] if batched else value.shape)
            names.append(name)
            shapes.append(shape)
            offsets.append(total)
            total += math.prod(shape)
        return FlatLayout(tuple(names), tuple(shapes), tuple(offsets), total)

    def views(self, flat: Tensor) -> Params:
        """Views of a (T, P) buffer as {name: (T, *shape)}; writes go through to the buffer."""
        t = flat.shape[0]
        return {
            name: flat[:, off : off + math.prod(shape)].view(t, *shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def pack(self, tree: Params, tasks: int, like: Tensor) -> Tensor:
        """A new (T, P) buffer holding `tree`; leaves with or without a task dim broadcast."""
        flat = like.new_empty(tasks, self.size)
        self.fill(flat, tree)
        return flat

    def fill(self, flat: Tensor, tree: Params, rows: slice = slice(None)) -> None:
        """Writes `tree`'s tasks `rows` into `flat` (those rows of a (T, P) buffer).

        A leaf with a task dim of size > 1 is sliced to `rows`; one without a task dim, or with a
        task dim of size 1, is broadcast.
        """
        views = self.views(flat)
        for name, shape in zip(self.names, self.shapes, strict=True):
            value = tree[name]
            if value.dim() > len(shape) and value.shape[0] > 1:
                value = value[rows]
            views[name].copy_(value)


def to_gemm(name: str, value: Tensor, batched: bool = False) -> Tensor:
    """Conv weights (..., O, C, 3, 3) as contiguous (..., 3, 3, C, O): the kernel's GEMM layout.

    A task dim that is an expanded view of one tensor (every task starting from phi) is cut to
    size 1, so the transposing copy is done once, then broadcast by `FlatLayout.fill`.
    """
    if not name.endswith("conv.weight"):
        return value
    if batched and value.stride(0) == 0:
        value = value[:1]
    return value.permute(*range(value.dim() - 4), -2, -1, -3, -4).contiguous()


def from_gemm_views(layout: FlatLayout, flat: Tensor) -> Params:
    """The tree in `flat` in module shapes: conv weights are permuted views of GEMM layout."""
    return {
        k: v.permute(0, 4, 3, 1, 2) if k.endswith("conv.weight") else v
        for k, v in layout.views(flat).items()
    }
