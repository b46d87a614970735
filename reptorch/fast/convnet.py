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


def _im2col(a: Tensor, stride: int) -> tuple[Tensor, tuple[int, ...]]:
    """(N, H, W, C) channels-last -> cols (N*Ho*Wo, 9*C) in (kh, kw, c) order, TF 'same' padding.

    Returns the columns and the geometry (Hp, Wp, Ho, Wo, top, left) the backward needs.
    """
    n, h, w, c = a.shape
    top, bottom = same_padding(h, 3, stride)
    left, right = same_padding(w, 3, stride)
    ap = F.pad(a, (0, 0, left, right, top, bottom)) if top + bottom + left + right else a
    ap = ap.contiguous()
    hp, wp = h + top + bottom, w + left + right
    ho, wo = (hp - 3) // stride + 1, (wp - 3) // stride + 1
    view = ap.as_strided(
        (n, ho, wo, 3, 3, c), (hp * wp * c, stride * wp * c, stride * c, wp * c, c, 1)
    )
    return view.reshape(n * ho * wo, 9 * c), (hp, wp, ho, wo, top, left)


def _col2im(dcols: Tensor, n: int, h: int, w: int, c: int, stride: int, geom: tuple) -> Tensor:
    """Adjoint of `_im2col`: scatter-adds the 9 kernel taps back; returns (N, H, W, C)."""
    hp, wp, ho, wo, top, left = geom
    d = dcols.view(n, ho, wo, 3, 3, c)
    dxp = dcols.new_zeros(n, hp, wp, c)
    he, we = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    for kh in range(3):
        for kw in range(3):
            dxp[:, kh : kh + he : stride, kw : kw + we : stride, :].add_(d[:, :, :, kh, kw, :])
    return dxp[:, top : top + h, left : left + w, :]


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
    """Logits (T, B, N); with `keep`, the per-layer tensors the backward needs."""
    t, b = x.shape[:2]
    a = x.permute(0, 1, 3, 4, 2).reshape(t * b, x.shape[3], x.shape[4], x.shape[2])
    saved: list[tuple] = []
    for i in range(spec.layers):
        n, h, w, c = a.shape
        cols, geom = _im2col(a, spec.stride)
        wm = _conv_weight_matrix(params[f"blocks.{i}.conv.weight"])
        o = wm.shape[2]
        z = torch.bmm(cols.view(t, -1, 9 * c), wm)  # (T, M, O); conv bias cancels in BN
        # Two-pass moments (torch.var_mean's Welford kernel is ~30x slower on this layout); z is
        # centred in place and kept centred for the backward.
        mu = z.mean(dim=1, keepdim=True)
        z.sub_(mu)
        r = torch.linalg.vecdot(z, z, dim=1).unsqueeze(1).mul_(1.0 / z.shape[1])
        r = r.add_(spec.eps).rsqrt_()
        gamma = params[f"blocks.{i}.norm.weight"].unsqueeze(1)
        scale = gamma * r
        y = torch.addcmul(params[f"blocks.{i}.norm.bias"].unsqueeze(1), z, scale).relu_()
        ho, wo = geom[2], geom[3]
        y = y.view(n, ho, wo, o)
        pooled = _maxpool_same(y) if spec.pool else y
        if keep:
            saved.append((cols, geom, wm, z, r, gamma, y, pooled, (n, h, w, c)))
        a = pooled
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
    params: Params, x: Tensor, y: Tensor, spec: ConvNetSpec = OMNIGLOT
) -> tuple[Tensor, Params]:
    """Mean softmax cross-entropy per task (T,) and its gradient w.r.t. every T-batched param.

    Same contract (and values, to float rounding) as
    `vmap(grad_and_value(lambda p, x, y: F.cross_entropy(functional_call(net, p, (x,)), y)))`.
    """
    with torch.no_grad():
        return _loss_and_grad(params, x, y, spec)


def _loss_and_grad(params: Params, x: Tensor, y: Tensor, spec: ConvNetSpec):
    t, b = x.shape[:2]
    out, saved, _, (cf, hf, wf) = _forward(params, x, spec, keep=True)
    # Cross-entropy: loss = mean_b (logsumexp(l_b) - l_b[y_b]); dL/dl = (softmax - onehot) / B.
    lse = torch.logsumexp(out, dim=2, keepdim=True)
    picked = out.gather(2, y.unsqueeze(2))
    loss = (lse - picked).mean(dim=(1, 2))
    g = (out - lse).exp_()
    g.scatter_add_(2, y.unsqueeze(2), g.new_full(picked.shape, -1.0)).mul_(1.0 / b)
    grads: Params = {}
    feat, wc = saved.pop()
    grads["classifier.bias"] = g.sum(1)
    dwc = torch.bmm(g.transpose(1, 2), feat)  # (T, N, H*W*C) channels-last
    nc = dwc.shape[1]
    grads["classifier.weight"] = (
        dwc.view(t, nc, hf, wf, cf).permute(0, 1, 4, 2, 3).reshape(t, nc, -1)
    )
    da = torch.bmm(g, wc).view(t * b, hf, wf, cf)
    for i in reversed(range(spec.layers)):
        cols, geom, wm, z, r, gamma, a, pooled, (n, h, w, c) = saved[i]
        if spec.pool:
            da = _maxpool_same_backward(da, a, pooled)
        m = z.shape[1]
        gy = _threshold_backward(da.reshape(t, m, -1), a.view(t, m, -1))  # dL/d(BN output)
        dbeta = gy.sum(1, keepdim=True)
        dgamma = r * torch.linalg.vecdot(gy, z, dim=1).unsqueeze(1)  # z is centred
        ca = gamma * r
        cb = ca * r * dgamma * (-1.0 / m)
        cc = ca * dbeta * (-1.0 / m)
        dz = torch.addcmul(cc, z, cb).addcmul_(gy, ca)
        grads[f"blocks.{i}.norm.weight"] = dgamma.squeeze(1)
        grads[f"blocks.{i}.norm.bias"] = dbeta.squeeze(1)
        dwm = torch.bmm(cols.view(t, m, -1).transpose(1, 2), dz)  # (T, 9C, O)
        o = dwm.shape[2]
        grads[f"blocks.{i}.conv.weight"] = (
            dwm.view(t, 3, 3, c, o).permute(0, 4, 3, 1, 2).contiguous()
        )
        grads[f"blocks.{i}.conv.bias"] = dz.new_zeros(t, o)
        if i > 0:
            dcols = torch.bmm(dz, wm.transpose(1, 2))
            da = _col2im(dcols, n, h, w, c, spec.stride, geom)
    return loss, {name: grads[name] for name in params}
