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
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reptorch.models import BN_EPS, same_padding

Params = dict[str, Tensor]


@dataclass(frozen=True)
class ConvNetSpec:
    """The shape of a paper conv net: `layers` x [conv 3x3 (stride) -> BN -> (pool) -> ReLU]."""

    stride: int
    pool: bool
    layers: int = 4
    eps: float = BN_EPS


OMNIGLOT = ConvNetSpec(stride=2, pool=False)
MINIIMAGENET = ConvNetSpec(stride=1, pool=True)


def _threshold_backward(grad: Tensor, out: Tensor) -> Tensor:
    """grad * [out > 0]: the ReLU backward, one fused kernel."""
    return torch.ops.aten.threshold_backward(grad, out, 0.0)


class _Workspace(threading.local):
    """Per-thread scratch buffers reused across calls, keyed by name.

    Fresh multi-MiB tensors each step cost page faults (glibc returns large blocks to the OS on
    free): measured ~20% of a single-threaded step. Buffers only grow; `clear_workspace()` frees
    them. Thread-local, so concurrent workers never share one.
    """

    def __init__(self) -> None:
        self.store: dict[str, Tensor] = {}

    def get(self, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        buf = self.store.get(key)
        if (
            buf is None
            or buf.numel() < numel
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = like.new_empty(numel)
            self.store[key] = buf
        return buf[:numel].view(shape)


_WS = _Workspace()


def clear_workspace() -> None:
    """Frees the calling thread's scratch buffers."""
    _WS.store.clear()


def _padded(n: int, h: int, w: int, c: int, stride: int, like: Tensor, key: str):
    """A (N, Hp, Wp, C) buffer with zeroed TF-'same' borders and its (N, H, W, C) interior view."""
    top, bottom = same_padding(h, 3, stride)
    left, right = same_padding(w, 3, stride)
    buf = _WS.get(key, (n, h + top + bottom, w + left + right, c), like)
    if top:
        buf[:, :top].zero_()
    if bottom:
        buf[:, top + h :].zero_()
    if left:
        buf[:, top : top + h, :left].zero_()
    if right:
        buf[:, top : top + h, left + w :].zero_()
    return buf, buf[:, top : top + h, left : left + w], (top, left)


def _im2col(ap: Tensor, stride: int, key: str) -> Tensor:
    """Padded (N, Hp, Wp, C) -> cols (N, Ho, Wo, 3, 3, C): the (kh, kw, c) patch of each output."""
    n, hp, wp, c = ap.shape
    ho, wo = (hp - 3) // stride + 1, (wp - 3) // stride + 1
    view = ap.as_strided(
        (n, ho, wo, 3, 3, c), (hp * wp * c, stride * wp * c, stride * c, wp * c, c, 1)
    )
    return _WS.get(key, view.shape, ap).copy_(view)


def _col2im(dcols: Tensor, hp: int, wp: int, stride: int, key: str) -> Tensor:
    """Adjoint of `_im2col`: scatter-adds the 9 taps of (N, Ho, Wo, 3, 3, C) into (N, Hp, Wp, C)."""
    n, ho, wo, _, _, c = dcols.shape
    dxp = _WS.get(key, (n, hp, wp, c), dcols).zero_()
    he, we = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    for kh in range(3):
        for kw in range(3):
            dxp[:, kh : kh + he : stride, kw : kw + we : stride, :].add_(dcols[:, :, :, kh, kw, :])
    return dxp


def _conv_weight_matrix(weight: Tensor) -> Tensor:
    """(T, O, C, 3, 3) -> (T, 9*C, O) in the (kh, kw, c) order of `_im2col`."""
    t, o, c = weight.shape[:3]
    return weight.permute(0, 3, 4, 2, 1).reshape(t, 9 * c, o)


def _classifier_matrix(weight: Tensor, c: int, hw: tuple[int, int]) -> Tensor:
    """(T, N, C*H*W) in NCHW flatten order -> (T, N, H*W*C) in channels-last order."""
    t, n = weight.shape[:2]
    return weight.view(t, n, c, hw[0], hw[1]).permute(0, 1, 3, 4, 2).reshape(t, n, -1)


def _maxpool_same(a: Tensor) -> Tensor:
    """2x2 stride-2 max pool with TF 'same' (ceil) padding of a non-negative (N, H, W, C) tensor."""
    n, h, w, c = a.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        a = F.pad(a, (0, 0, 0, pw, 0, ph))
    return a.view(n, (h + ph) // 2, 2, (w + pw) // 2, 2, c).amax(dim=(2, 4))


def _maxpool_same_backward(g: Tensor, a: Tensor, pooled: Tensor) -> Tensor:
    """Routes dL/dpooled to the window maxima of `a` (N, H, W, C); zero where the max is 0."""
    n, h, w, c = a.shape
    ph, pw = h % 2, w % 2
    ap = F.pad(a, (0, 0, 0, pw, 0, ph)) if ph or pw else a
    g = _threshold_backward(g, pooled)
    h2, w2 = pooled.shape[1], pooled.shape[2]
    win = ap.view(n, h2, 2, w2, 2, c)
    mask = win == pooled.view(n, h2, 1, w2, 1, c)
    out = (mask * g.view(n, h2, 1, w2, 1, c)).view(n, 2 * h2, 2 * w2, c)
    return out[:, :h, :w, :] if ph or pw else out


def _forward(
    params: Params, x: Tensor, spec: ConvNetSpec, keep: bool
) -> tuple[Tensor, list[tuple], Tensor, tuple[int, int, int]]:
    """Logits (T, B, N); with `keep`, the per-layer tensors the backward needs.

    Without pooling, BN+ReLU writes straight into the interior of the next layer's padded buffer.
    """
    t, b, c, h, w = x.shape
    n = t * b
    ap, interior, pad = _padded(n, h, w, c, spec.stride, x, "pad0")
    interior.view(t, b, h, w, c).copy_(x.permute(0, 1, 3, 4, 2))
    saved: list[tuple] = []
    a = interior
    for i in range(spec.layers):
        hp, wp, pad_in = ap.shape[1], ap.shape[2], pad
        cols = _im2col(ap, spec.stride, f"cols{i}")
        ho, wo = cols.shape[1], cols.shape[2]
        wm = _conv_weight_matrix(params[f"blocks.{i}.conv.weight"])
        o, m = wm.shape[2], b * ho * wo
        z = torch.bmm(cols.view(t, m, 9 * c), wm, out=_WS.get(f"z{i}", (t, m, o), x))
        # (T, M, O); the conv bias cancels in BN. Two-pass moments (torch.var_mean's Welford
        # kernel is ~30x slower on this layout); z is centred in place, kept for the backward.
        mu = z.mean(dim=1, keepdim=True)
        z.sub_(mu)
        sq = torch.mul(z, z, out=_WS.get("sq", z.shape, x))
        r = sq.sum(1, keepdim=True).mul_(1.0 / m).add_(spec.eps).rsqrt_()
        gamma = params[f"blocks.{i}.norm.weight"].unsqueeze(1)
        scale = gamma * r
        beta = params[f"blocks.{i}.norm.bias"]
        last = i + 1 == spec.layers
        if spec.pool or last:
            y = _WS.get(f"y{i}", (n, ho, wo, o), x)
            torch.addcmul(beta.unsqueeze(1), z, scale, out=y.view(t, m, o)).relu_()
            pooled = _maxpool_same(y) if spec.pool else y
            if not last:
                ap_next, inner, pad = _padded(
                    n, *pooled.shape[1:3], o, spec.stride, x, f"pad{i + 1}"
                )
                inner.copy_(pooled)
        else:
            ap_next, y, pad = _padded(n, ho, wo, o, spec.stride, x, f"pad{i + 1}")
            torch.addcmul(
                beta.view(t, 1, 1, 1, o),
                z.view(t, b, ho, wo, o),
                scale.view(t, 1, 1, 1, o),
                out=y.view(t, b, ho, wo, o),
            ).relu_()
            pooled = y
        if keep:
            saved.append((cols, (hp, wp, pad_in), wm, z, r, gamma, y, pooled, (n, h, w, c)))
        a, (h, w, c) = pooled, pooled.shape[1:]
        if not last:
            ap = ap_next
    feat = a.reshape(t, b, -1)
    hw = (a.shape[1], a.shape[2])
    wc = _classifier_matrix(params["classifier.weight"], a.shape[3], hw)
    logits = torch.baddbmm(params["classifier.bias"].unsqueeze(1), feat, wc.transpose(1, 2))
    if keep:
        saved.append((feat, wc))
    return logits, saved, a, (a.shape[3], hw[0], hw[1])


def logits(params: Params, x: Tensor, spec: ConvNetSpec = OMNIGLOT) -> Tensor:
    """Forward only: T-batched params, x (T, B, C, H, W) -> logits (T, B, num_classes)."""
    with torch.no_grad():
        return _forward(params, x, spec, keep=False)[0]


def loss_and_grad(
    params: Params,
    x: Tensor,
    y: Tensor,
    spec: ConvNetSpec = OMNIGLOT,
    out: Params | None = None,
) -> tuple[Tensor, Params]:
    """Mean softmax cross-entropy per task (T,) and its gradient w.r.t. every T-batched param.

    Same contract (and values, to float rounding) as
    `vmap(grad_and_value(lambda p, x, y: F.cross_entropy(functional_call(net, p, (x,)), y)))`.
    `out`, if given, receives the gradients (tensors of the params' shapes, e.g. views into one
    flat buffer) and is returned as the gradient dict.
    """
    with torch.no_grad():
        return _loss_and_grad(params, x, y, spec, out)


def _emit(grads: Params, out: Params | None, name: str, value: Tensor) -> None:
    """Stores a gradient: copied into `out[name]` if given, else made contiguous."""
    if out is None:
        grads[name] = value.contiguous()
    else:
        grads[name] = out[name].copy_(value)


def _loss_and_grad(params: Params, x: Tensor, y: Tensor, spec: ConvNetSpec, out: Params | None):
    t, b = x.shape[:2]
    scores, saved, _, (cf, hf, wf) = _forward(params, x, spec, keep=True)
    # Cross-entropy: loss = mean_b (logsumexp(l_b) - l_b[y_b]); dL/dl = (softmax - onehot) / B.
    lse = torch.logsumexp(scores, dim=2, keepdim=True)
    picked = scores.gather(2, y.unsqueeze(2))
    loss = (lse - picked).mean(dim=(1, 2))
    g = (scores - lse).exp_()
    g.scatter_add_(2, y.unsqueeze(2), g.new_full(picked.shape, -1.0)).mul_(1.0 / b)
    grads: Params = {}
    feat, wc = saved.pop()
    _emit(grads, out, "classifier.bias", g.sum(1))
    dwc = torch.bmm(g.transpose(1, 2), feat)  # (T, N, H*W*C) channels-last
    nc = dwc.shape[1]
    dwc = dwc.view(t, nc, hf, wf, cf).permute(0, 1, 4, 2, 3).reshape(t, nc, -1)
    _emit(grads, out, "classifier.weight", dwc)
    da = torch.bmm(g, wc).view(t * b, hf, wf, cf)
    for i in reversed(range(spec.layers)):
        cols, (hp, wp, (top, left)), wm, z, r, gamma, a, pooled, (n, h, w, c) = saved[i]
        if spec.pool:
            da = _maxpool_same_backward(da, a, pooled)
        m, o = z.shape[1], z.shape[2]
        gy = _WS.get(f"gy{i}", a.shape, z)  # dL/d(BN output) = dL/da * [a > 0]
        torch.ops.aten.threshold_backward.grad_input(da, a, 0.0, grad_input=gy)
        gy = gy.view(t, m, o)
        dbeta = gy.sum(1, keepdim=True)
        sgz = torch.mul(gy, z, out=_WS.get("sq", z.shape, z)).sum(1, keepdim=True)
        dgamma = r * sgz  # z is centred
        ca = gamma * r
        cb = ca * r * dgamma * (-1.0 / m)
        cc = ca * dbeta * (-1.0 / m)
        dz = torch.addcmul(cc, z, cb, out=_WS.get(f"dz{i}", z.shape, z)).addcmul_(gy, ca)
        _emit(grads, out, f"blocks.{i}.norm.weight", dgamma.squeeze(1))
        _emit(grads, out, f"blocks.{i}.norm.bias", dbeta.squeeze(1))
        dwm = torch.bmm(cols.view(t, m, -1).transpose(1, 2), dz)  # (T, 9C, O)
        _emit(grads, out, f"blocks.{i}.conv.weight", dwm.view(t, 3, 3, c, o).permute(0, 4, 3, 1, 2))
        if out is None:
            grads[f"blocks.{i}.conv.bias"] = dz.new_zeros(t, o)
        else:
            grads[f"blocks.{i}.conv.bias"] = out[f"blocks.{i}.conv.bias"].zero_()
        if i > 0:
            dcols = torch.bmm(dz, wm.transpose(1, 2), out=_WS.get(f"dcols{i}", (t, m, 9 * c), z))
            dxp = _col2im(dcols.view(cols.shape), hp, wp, spec.stride, f"dxp{i}")
            da = dxp[:, top : top + h, left : left + w, :]
    return loss, {name: grads[name] for name in params}
