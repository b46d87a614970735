"""Arithmetic on parameter trees (`dict[str, Tensor]`), so meta updates read like the paper.

`phi = lerp(phi, mean(adapted), eps)` is the Reptile update phi <- phi + eps * (mean_i W_i - phi).
A batched tree carries a leading task dimension on every tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Params = dict[str, torch.Tensor]


def tree_map(fn: Callable[..., torch.Tensor], tree: Params, *rest: Params) -> Params:
    """Applies `fn` leaf by leaf: {name: fn(tree[name], *(r[name] for r in rest))}."""
    return {name: fn(value, *(other[name] for other in rest)) for name, value in tree.items()}


def add(a: Params, b: Params) -> Params:
    return tree_map(torch.add, a, b)


def sub(a: Params, b: Params) -> Params:
    return tree_map(torch.sub, a, b)


def scale(a: Params, factor: float | torch.Tensor) -> Params:
    return {name: value * factor for name, value in a.items()}


def lerp(start: Params, end: Params, weight: float) -> Params:
    """start + weight * (end - start), leaf by leaf."""
    return tree_map(lambda s, e: s + weight * (e - s), start, end)


def mean(trees: Sequence[Params]) -> Params:
    """Leaf-wise mean of several trees."""
    return {name: torch.stack([t[name] for t in trees]).mean(0) for name in trees[0]}


def batch_mean(batched: Params) -> Params:
    """Mean over the leading task dimension of a batched tree, summed in float64.

    A float64 sum of a few float32 values is exact, so the mean does not depend on how the tasks
    were grouped (one batch, threads, or processes adding partial sums: `reptorch.distributed`).
    """
    return {
        name: value.double().sum(0).div(value.shape[0]).to(value.dtype)
        for name, value in batched.items()
    }


def stack(trees: Sequence[Params]) -> Params:
    """Stacks trees into one batched tree (task dimension first)."""
    return {name: torch.stack([t[name] for t in trees]) for name in trees[0]}


def unstack(batched: Params) -> list[Params]:
    """Inverse of `stack`."""
    size = next(iter(batched.values())).shape[0]
    return [{name: value[i] for name, value in batched.items()} for i in range(size)]


def expand(tree: Params, size: int) -> Params:
    """A batched view of `size` copies of `tree` (no memory copied)."""
    return {name: value.expand(size, *value.shape) for name, value in tree.items()}


def zeros_like(tree: Params) -> Params:
    return tree_map(torch.zeros_like, tree)


def clone(tree: Params) -> Params:
    return tree_map(torch.clone, tree)


def detach(tree: Params) -> Params:
    return tree_map(torch.Tensor.detach, tree)


def squared_norm(tree: Params) -> torch.Tensor:
    """Sum of squares of all leaves (over all dimensions)."""
    return sum(value.pow(2).sum() for value in tree.values())  # type: ignore[return-value]
