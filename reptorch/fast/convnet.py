"""Hand-written forward/backward of the paper's conv nets, batched over tasks, without autograd.

Every task t has its own parameters and its own BatchNorm batch statistics, so a batch of T tasks is
T independent networks. Instead of grouped convolutions (whose backward dominated the profile of a
vmapped autograd version), each conv is an explicit im2col + batched GEMM over tasks:

    cols_t = im2col(pad_same(a_t))            (B*Ho*Wo, 9*C)    one strided copy
    z_t    = cols_t @ Wm_t                    (B*Ho*Wo, O)      torch.bmm over t
    dWm_t  = cols_t^T @ dz_t,  dcols_t = dz_t @ Wm_t^T,  da_t = col2im(dcols_t)

Activations stay channels-last, `(T, B*H*W, C)`, so the GEMM output is already the next layer's
layout, BatchNorm reduces over dim 1, and the per-channel vectors broadcast as `(T, 1, C)`.

BatchNorm (batch statistics, eps 1e-3) + ReLU are merged. With xhat = (z - mu) * r, r = 1/sqrt(var +
eps), y = gamma * xhat + beta, a = relu(y), g = dL/dy = dL/da * [a > 0] and M = B*H*W:

    dbeta = sum g,   dgamma = sum g * xhat = r * sum g * (z - mu)
    dz = gamma r (g - dbeta/M - xhat dgamma/M) = A g + Bc (z - mu) + Cc   (per channel)

The GEMM output z is centred in place (two-pass moments), so (z - mu) is what is kept.

The conv bias is followed by BatchNorm, which subtracts the batch mean, so it changes neither the
output nor any other gradient, and its exact gradient is zero (the autograd reference returns the
same zero up to float rounding, ~1e-9). It is therefore skipped in the forward pass and its gradient
is returned as zeros.

Max pooling (Mini-ImageNet, 2x2 stride 2, TF 'same' = ceil_mode) is applied after the ReLU: the two
commute (ReLU is monotone), and after the ReLU the 'same' padding can be zeros. The gradient goes to
the window's maximum when that maximum is positive (exact ties between positive values, a
measure-zero event, would each get the gradient).

The code is `reptorch.fast.kernel.ConvNetKernel` (with its inner loop in
`reptorch.fast.inner_loop`), a TorchScript module (one per thread, so the GIL
is released for a whole step); this module gives it a dict interface.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from reptorch.fast.fused import FusedKernel, FusedNativeCommKernel
from reptorch.fast.inner_loop import InnerLoopKernel, NativeCommKernel
from reptorch.models import BN_EPS

Params = dict[str, Tensor]


@dataclass(frozen=True)
class ConvNetSpec:
    """The shape of a paper conv net: `layers` x [conv 3x3 (stride) -> BN -> (pool) -> ReLU]."""

    stride: int
    pool: bool
    layers: int = 4
    eps: float = BN_EPS
    native: bool | None = None  # PyTorch's own convolutions; None: where they measure faster
    fused: bool = False  # the blocks' BatchNorm/ReLU/pool passes on the native ops (`fast.fused`)

    def native_convolutions(self) -> bool:
        """Whether the convs run on PyTorch's kernels (oneDNN) rather than im2col + GEMM.

        Measured per network (docs/benchmarks.md): at Mini-ImageNet's 84x84 stride-1 layers
        oneDNN's direct convolution beats the im2col copy + GEMM 2-3x in both passes; Omniglot's
        28x28 stride-2 layers (asymmetric 'same' padding) stay on im2col, which wins there.
        """
        return self.stride == 1 if self.native is None else self.native

    def kernel_shape(self) -> tuple[int, bool, int, float, bool]:
        """The kernels' constructor arguments: (stride, pool, layers, eps, native convs)."""
        return (self.stride, self.pool, self.layers, self.eps, self.native_convolutions())

    def names(self) -> list[str]:
        """Parameter names in the module's (and the kernel's) order."""
        names = []
        for i in range(self.layers):
            names += [f"blocks.{i}.conv.{p}" for p in ("weight", "bias")]
            names += [f"blocks.{i}.norm.{p}" for p in ("weight", "bias")]
        return [*names, "classifier.weight", "classifier.bias"]


OMNIGLOT = ConvNetSpec(stride=2, pool=False)
MINIIMAGENET = ConvNetSpec(stride=1, pool=True)

_LOCAL = threading.local()
_SCRIPT_LOCK = threading.Lock()  # concurrent torch.jit.script calls of one class collide


def _compile(module: InnerLoopKernel) -> InnerLoopKernel:
    """TorchScript, unless REPTORCH_NO_JIT=1 or scripting fails (then eager: same numbers)."""
    if os.environ.get("REPTORCH_NO_JIT", "") not in ("", "0"):
        return module
    try:
        with _SCRIPT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's: kernel.py
            return torch.jit.script(module)
    except Exception as error:  # a torch without TorchScript: run eagerly, say so once
        warnings.warn(f"reptorch.fast: no TorchScript ({error}); running eagerly", stacklevel=3)
        return module


def kernel(spec: ConvNetSpec, native_comm: bool = False) -> InnerLoopKernel:
    """The calling thread's kernel for `spec` (scratch buffers are per thread); `native_comm`:
    its workers meet through the native ops (`reptorch.fast.comm.native()` must be True)."""
    kernels = getattr(_LOCAL, "kernels", None)
    if kernels is None:
        kernels = _LOCAL.kernels = {}
    key = (spec, native_comm)
    if key not in kernels:
        if spec.fused:
            cls = FusedNativeCommKernel if native_comm else FusedKernel
        else:
            cls = NativeCommKernel if native_comm else InnerLoopKernel
        kernels[key] = _compile(cls(*spec.kernel_shape()))
    return kernels[key]


def clear_workspace() -> None:
    """Frees the calling thread's scratch buffers."""
    for k in getattr(_LOCAL, "kernels", {}).values():
        k.clear()


def logits(params: Params, x: Tensor, spec: ConvNetSpec = OMNIGLOT) -> Tensor:
    """Forward only: T-batched params, x (T, B, C, H, W) -> logits (T, B, num_classes)."""
    with torch.no_grad():
        return kernel(spec).logits([params[k] for k in spec.names()], x)


def loss_and_grad(
    params: Params,
    x: Tensor,
    y: Tensor,
    spec: ConvNetSpec = OMNIGLOT,
    out: Params | None = None,
    reduction: str = "mean",
) -> tuple[Tensor, Params]:
    """Softmax cross-entropy per task (T,), mean or sum over the mini-batch (`reduction`), and its
    gradient w.r.t. every T-batched param.

    Same contract (and values, to float rounding) as
    `vmap(grad_and_value(lambda p, x, y: F.cross_entropy(functional_call(net, p, (x,)), y,
    reduction=reduction)))`.
    `out`, if given, receives the gradients (tensors of the params' shapes, e.g. views into one
    flat buffer) and is returned as the gradient dict.
    """
    names = spec.names()
    if out is None:
        out = {k: x.new_empty(params[k].shape) for k in names}
    with torch.no_grad():
        loss = kernel(spec).loss_and_grad(
            [params[k] for k in names], [x], [y], [[out[k] for k in names]], False, -1, 0, 0,
            x.shape[1], float(x.shape[1]) if reduction == "mean" else 1.0,
        )[0]  # fmt: skip
    return loss, {k: out[k] for k in params}
