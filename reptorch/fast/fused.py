"""Fused passes over a conv block's activations, as native ops (`csrc/fused_*.cpp`).

A block's BatchNorm, ReLU (and max pool) take PyTorch five to ten ops per pass. Mini-ImageNet's
first layer streams 4.5 MB activations per worker and step, bandwidth-bound, about ten times (the
pool backward alone zero-fills a full-size buffer and scatters into it); Omniglot's small
activations pay a few microseconds of overhead per op, and a slow strided ReLU backward. The
native ops take one pass each: BatchNorm's moments, BatchNorm + ReLU (+ pool) forward, the
backward's two BatchNorm sums, and dL/dz; and im2col and its adjoint (nine strided adds in
PyTorch), one pass each, bitwise the same. Same maths as the ATen path; the per-channel sums
accumulate in double, so results differ from it by float rounding (`csrc/fused.h` says which
passes are bitwise ATen's).

Which passes run is a run's `kernels` setting (`reptorch.config.KERNELS`): "aten" (PyTorch's
ops, the trajectory of runs before the fused ops existed) or "fused" (both paper nets). A
`Trainer` selects its run's for the process (`select`) before it builds its oracles; library
code that builds none gets "aten". `REPTORCH_NO_FUSED=1` keeps the native ops unbuilt.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reptorch.fast.inner_loop import InnerLoopKernel, NativeCommKernel
from reptorch.fast.native import load

_SELECTED = ["aten"]  # this process's choice (`select`), read where a network's spec is made


SOURCES = (
    "fused_moments.cpp",
    "fused_pooled.cpp",
    "fused_plain.cpp",
    "fused_im2col.cpp",
)  # + fused.h


def flags() -> tuple[str, ...]:
    """g++ flags: the elementwise ops round as PyTorch's, whose vectorised addcmul is one fused
    multiply-add on AVX2 / AVX-512 (so: FMA there, and no other contraction anywhere)."""
    vector = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return ("-O3", "-ffp-contract=off", *(("-mavx2", "-mfma") if vector else ()))


def available() -> bool:
    """Whether the fused ops are loaded (compiled on the first call; False, said once, where
    they cannot be built)."""
    return load("reptorch_fused", "bn_dz", "REPTORCH_NO_FUSED", flags(), SOURCES)


def select(kernels: str) -> None:
    """Makes `kernels` ("aten" or "fused") this process's block passes: the specs
    (`reptorch.fast.oracle.spec_for`) and so the oracles made from now on use them."""
    if kernels == "fused" and not available():
        raise RuntimeError("the fused native ops are not available")
    _SELECTED[0] = kernels


def selected() -> str:
    """This process's block passes ("aten" until `select` says otherwise)."""
    return _SELECTED[0]


class FusedOps:
    """The blocks' BatchNorm / ReLU / pool passes of `KernelPrimitives` on the native ops.

    In a pooled block `where` is the window's cell of each maximum (int32, 0..3), where ATen's
    pool gives a flat index, and the full-size ReLU output y is never written (its slot holds
    `pooled`)."""

    def _channel_sums(self, z: Tensor) -> Tensor:
        return torch.ops.reptorch_fused.channel_sums(z)

    def _centre_squares(self, z: Tensor, mean: Tensor, key: str) -> Tensor:
        return torch.ops.reptorch_fused.centre_squares(z, mean)

    def _bn_scale(self, squares: Tensor, gamma: Tensor, m: int) -> tuple[Tensor, Tensor]:
        return torch.ops.reptorch_fused.bn_scale(squares, gamma, m, self.eps)

    def _bn_coefficients(
        self, total: Tensor, r: Tensor, gamma: Tensor, m: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return torch.ops.reptorch_fused.bn_coefficients(total, r, gamma, m)

    def _bn_relu(self, z: Tensor, scale: Tensor, beta: Tensor, y: Tensor, padded: bool) -> None:
        torch.ops.reptorch_fused.bn_relu(z, scale, beta, y)

    def _bn_sums(self, g: Tensor, y: Tensor, z: Tensor, key: str) -> tuple[Tensor, Tensor]:
        return torch.ops.reptorch_fused.bn_sums(g, y, z), g

    def _bn_dz(
        self, gy: Tensor, y: Tensor, z: Tensor, ca: Tensor, cb: Tensor, cc: Tensor, dz: Tensor
    ) -> None:
        torch.ops.reptorch_fused.bn_dz(gy, y, z, ca, cb, cc, dz)

    def _im2col(self, ap: Tensor, ho: int, wo: int, key: str) -> Tensor:
        """One pass (`csrc/fused_im2col.cpp`): a copy, so the same values."""
        cols = self._buf(key, [ap.size(0), ho, wo, 3, 3, ap.size(3)], ap)
        torch.ops.reptorch_fused.im2col(ap, self.stride, cols)
        return cols

    def _col2im(self, dcols: Tensor, hp: int, wp: int, key: str) -> Tensor:
        """The nine taps in one pass, bitwise the nine strided adds (`csrc/fused_im2col.cpp`)."""
        dxp = self._buf(key, [dcols.size(0), hp, wp, dcols.size(5)], dcols)
        torch.ops.reptorch_fused.col2im(dcols, self.stride, dxp)
        return dxp

    def _relu_pool(
        self, z: Tensor, scale: Tensor, beta: Tensor, n: int, h: int, w: int, key: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        shape = [n, (h + 1) // 2, (w + 1) // 2, z.size(2)]
        pooled = self._buf(key, shape, z)
        where = self._buf(key + ":where", shape, z.new_empty([0], dtype=torch.int32))
        torch.ops.reptorch_fused.relu_pool(z, scale, beta, h, w, pooled, where)
        return pooled, pooled, where

    def _pool_bn_sums(
        self,
        g: Tensor,
        y: Tensor,
        pooled: Tensor,
        where: Tensor,
        z: Tensor,
        h: int,
        w: int,
        key: str,
    ) -> tuple[Tensor, Tensor]:
        return torch.ops.reptorch_fused.pool_bn_sums(g, pooled, where, z, h, w), g

    def _pool_bn_dz(
        self,
        gy: Tensor,
        pooled: Tensor,
        where: Tensor,
        z: Tensor,
        ca: Tensor,
        cb: Tensor,
        cc: Tensor,
        h: int,
        w: int,
        dz: Tensor,
    ) -> None:
        torch.ops.reptorch_fused.pool_bn_dz(gy, pooled, where, z, ca, cb, cc, h, w, dz)


class FusedKernel(FusedOps, InnerLoopKernel):
    """`InnerLoopKernel` with the blocks' fused passes."""


class FusedNativeCommKernel(FusedOps, NativeCommKernel):
    """`NativeCommKernel` with the blocks' fused passes."""
