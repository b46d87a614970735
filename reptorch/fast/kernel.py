"""The paper conv nets' forward, backward and inner loop: a TorchScript module per worker thread.

The maths is the hand-written, autograd-free forward/backward described in `reptorch.fast.convnet`
(im2col + batched GEMM over tasks, merged BatchNorm + ReLU, channels-last activations). This module
runs it. Why TorchScript: a Python thread holds the GIL between PyTorch calls, and one inner step
is several hundred small calls, so two Python workers serialise on the GIL (measured: two threads
doing tiny ops took 2.4x as long as one). A scripted method runs its whole body in C++ with the
GIL released, so two workers really run in parallel. `torch.jit.script` is deprecated in favour of
`torch.compile`, which needs a C++ compiler at run time and still runs its Python wrapper under the
GIL; if scripting fails, the same class runs eagerly (slower, same numbers; `REPTORCH_NO_JIT=1`
forces it).

Parameter lists follow the module's order: for each block i, [conv.weight, conv.bias, norm.weight,
norm.bias] at 4i..4i+3, then classifier.weight, classifier.bias. With `gemm` the conv weights are
stored in GEMM layout, (T, 3, 3, C, O) instead of (T, O, C, 3, 3): the flat inner loop keeps them
so, which removes two permute-copies of every conv weight per step.

Workers that split one task's images (`comm >= 0`) meet in `_allreduce` / `_barrier`: the native
ops of `reptorch.fast.comm` in `NativeCommKernel`, else plain Python
calls (`torch.jit.ignore`) into `reptorch.fast.comm`: BatchNorm's batch sums and the weight
gradients are summed across them, so the result is that of the whole batch.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reptorch.fast import comm as _comm


@torch.jit.ignore
def _allreduce(comm: int, rank: int, value: Tensor) -> Tensor:
    return _comm.allreduce(comm, rank, value)


@torch.jit.ignore
def _barrier(comm: int) -> None:
    _comm.barrier(comm)


class ConvNetKernel(nn.Module):
    """Batched-over-tasks loss, gradient and inner loop of a paper conv net (see module doc).

    `ws` holds scratch buffers reused across calls (fresh multi-MiB tensors each step cost page
    faults, ~20% of a step); one instance per thread, so workers never share one.
    """

    ws: dict[str, Tensor]
    shaped: dict[str, Tensor]
    taps: dict[str, list[Tensor]]

    def __init__(self, stride: int, pool: bool, layers: int, eps: float, native: bool) -> None:
        super().__init__()
        if native and stride != 1:
            raise ValueError("native convolutions need stride 1 (symmetric 'same' padding)")
        self.native = native
        self.stride = stride
        self.pool = pool
        self.layers = layers
        self.eps = eps
        self.ws = {}
        self.shaped = {}
        self.taps = {}

    def _allreduce(self, comm: int, rank: int, value: Tensor) -> Tensor:
        """The sum of `value` over the workers of group `comm` (Python meetings)."""
        return _allreduce(comm, rank, value)

    def _barrier(self, comm: int) -> None:
        _barrier(comm)

    def _buf(self, key: str, shape: list[int], like: Tensor) -> Tensor:
        """The scratch tensor `key` with this shape, reused while shape, dtype and device hold."""
        return self._cached(key, shape, like)[0]

    def _cached(self, key: str, shape: list[int], like: Tensor) -> tuple[Tensor, bool]:
        """`_buf` and whether the view is new (new shape or new buffer) since the last call.

        The view itself is cached, so a step costs no slicing or viewing ops for its buffers
        (a TorchScript op costs ~1 us; a step has hundreds of them).
        """
        if key in self.shaped:
            view = self.shaped[key]
            if view.size() == shape and view.dtype == like.dtype and view.device == like.device:
                return view, False
        n = 1
        for size in shape:
            n *= size
        buf = torch.empty([0], dtype=like.dtype, device=like.device)
        if key in self.ws:
            buf = self.ws[key]
        if buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty([n], dtype=like.dtype, device=like.device)
            self.ws[key] = buf
            self.taps.clear()  # tap views may point into a replaced buffer
        view = buf[:n].view(shape)
        self.shaped[key] = view
        return view, True

    @torch.jit.export
    def clear(self) -> None:
        self.ws.clear()
        self.shaped.clear()
        self.taps.clear()

    def _same(self, size: int) -> tuple[int, int]:
        """TF 'same' padding (before, after) of a 3-wide window: out = ceil(size / stride)."""
        out = (size + self.stride - 1) // self.stride
        total = max((out - 1) * self.stride + 3 - size, 0)
        return total // 2, total - total // 2

    def _padded(
        self, n: int, h: int, w: int, c: int, key: str, like: Tensor
    ) -> tuple[Tensor, Tensor, int, int]:
        """A (N, Hp, Wp, C) buffer with zeroed 'same' borders, its interior view, (top, left).

        Only interiors are ever written, so borders are zeroed once per buffer and shape.
        """
        top, bottom = self._same(h)
        left, right = self._same(w)
        shape = [n, h + top + bottom, w + left + right, c]
        inner = key + ":interior"
        buf, new = self._cached(key, shape, like)
        if not new and inner in self.shaped:
            return buf, self.shaped[inner], top, left
        if top > 0:
            buf[:, :top].zero_()
        if bottom > 0:
            buf[:, top + h :].zero_()
        if left > 0:
            buf[:, top : top + h, :left].zero_()
        if right > 0:
            buf[:, top : top + h, left + w :].zero_()
        interior = buf[:, top : top + h, left : left + w]
        self.shaped[inner] = interior
        return buf, interior, top, left

    def _col2im(self, dcols: Tensor, hp: int, wp: int, key: str) -> Tensor:
        """Adjoint of im2col: adds the 9 taps of (N, Ho, Wo, 3, 3, C) into (N, Hp, Wp, C)."""
        n, ho, wo, c = dcols.size(0), dcols.size(1), dcols.size(2), dcols.size(5)
        dxp = self._buf(key, [n, hp, wp, c], dcols)
        taps: list[Tensor] = []
        if key in self.taps:
            taps = self.taps[key]
            # Valid while the shapes hold: `_buf` drops every tap list when it replaces a buffer.
            if taps[0].size() != dxp.size() or taps[1].size() != dcols.size():
                taps = []
        if len(taps) == 0:  # (destination, source) view pairs, built once per shape
            taps = [dxp, dcols]
            he, we = self.stride * (ho - 1) + 1, self.stride * (wo - 1) + 1
            for kh in range(3):
                for kw in range(3):
                    taps.append(dxp[:, kh : kh + he : self.stride, kw : kw + we : self.stride, :])
                    taps.append(dcols[:, :, :, kh, kw, :])
            self.taps[key] = taps
        dxp.zero_()
        for j in range(2, 20, 2):
            taps[j].add_(taps[j + 1])
        return dxp

    def _oihw(self, weight: Tensor, gemm: bool) -> Tensor:
        """One task's conv weight as (O, C, 3, 3) in channels-last memory, oneDNN's layout."""
        if gemm:
            weight = weight.permute(3, 2, 0, 1)
        return weight.contiguous(memory_format=torch.channels_last)

    def _conv(self, a: Tensor, weight: Tensor, gemm: bool, t: int, b: int, key: str) -> Tensor:
        """z (T, B*H*W, O): task t's 3x3 stride-1 'same' convolution of its images in `a`
        (T*B, H, W, C), by PyTorch's own kernel (oneDNN on CPU), channels-last in and out."""
        n, h, w = a.size(0), a.size(1), a.size(2)
        o = weight.size(4) if gemm else weight.size(1)
        if t == 1:
            out = F.conv2d(a.permute(0, 3, 1, 2), self._oihw(weight[0], gemm), None, 1, 1)
            return out.permute(0, 2, 3, 1).reshape(1, n * h * w, o)
        z = self._buf(key, [n, h, w, o], a)
        for j in range(t):
            images = a[j * b : (j + 1) * b].permute(0, 3, 1, 2)
            out = F.conv2d(images, self._oihw(weight[j], gemm), None, 1, 1)
            z[j * b : (j + 1) * b].copy_(out.permute(0, 2, 3, 1))
        return z.view(t, b * h * w, o)

    def _conv_backward(
        self,
        dz: Tensor,
        a: Tensor,
        weight: Tensor,
        gemm: bool,
        t: int,
        grad_weight: Tensor,
        need_input: bool,
        key: str,
    ) -> Tensor:
        """The adjoint of `_conv`: writes dL/dW into `grad_weight` (T, ...) and returns dL/da
        (T*B, H, W, C) when `need_input` (else an empty tensor)."""
        n, h, w, c = a.size(0), a.size(1), a.size(2), a.size(3)
        b = n // t
        o = dz.size(2)
        da = torch.empty([0], dtype=a.dtype, device=a.device)
        if need_input and t > 1:
            da = self._buf("da" + key, [n, h, w, c], a)
        for j in range(t):
            g = dz[j].view(b, h, w, o).permute(0, 3, 1, 2)
            images = a[j * b : (j + 1) * b].permute(0, 3, 1, 2)
            grads = torch.ops.aten.convolution_backward(
                g, images, self._oihw(weight[j], gemm), None,
                [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [need_input, True, False],
            )  # fmt: skip
            dw = grads[1]
            if gemm:
                grad_weight[j].copy_(dw.permute(2, 3, 1, 0))
            else:
                grad_weight[j].copy_(dw)
            if need_input:
                dx = grads[0].permute(0, 2, 3, 1)
                if t == 1:
                    da = dx
                else:
                    da[j * b : (j + 1) * b].copy_(dx)
        return da

    def _maxpool(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """2x2 stride-2 max pool of a non-negative (N, H, W, C) with TF 'same' padding (= ceil
        mode: an odd side's last window is cut), and the argmax of each window.

        PyTorch's own channels-last kernel: a hand-written reduction over a 6-d view of the
        windows (the inner run is only C wide) measured ~10x slower in both passes.
        """
        pooled, where = torch.ops.aten.max_pool2d_with_indices(
            a.permute(0, 3, 1, 2), [2, 2], [2, 2], [0, 0], [1, 1], True
        )
        return pooled.permute(0, 2, 3, 1), where

    def _maxpool_backward(self, g: Tensor, a: Tensor, pooled: Tensor, where: Tensor) -> Tensor:
        """Routes dL/dpooled to each window's maximum in `a` (through the ReLU: zero where the
        maximum is 0)."""
        g = torch.ops.aten.threshold_backward(g, pooled, 0.0)  # the ReLU backward
        out = torch.ops.aten.max_pool2d_with_indices_backward(
            g.permute(0, 3, 1, 2),
            a.permute(0, 3, 1, 2),
            [2, 2],
            [2, 2],
            [0, 0],
            [1, 1],
            True,
            where,
        )
        return out.permute(0, 2, 3, 1)

    def _forward(
        self,
        params: list[Tensor],
        x: Tensor,
        keep: bool,
        gemm: bool,
        comm: int,
        rank: int,
        batch: int,
    ) -> tuple[Tensor, list[Tensor], list[list[int]]]:
        """Logits (T, B, N) of x (T, B, C, H, W); with `keep`, what the backward needs.

        `batch`: images per task over all workers (BatchNorm's M counts them all).
        """
        t, b, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3), x.size(4)
        n = t * b
        if self.native:  # unpadded channels-last input: the convolution pads
            ap = self._buf("in0", [n, h, w, c], x)
            interior, top, left = ap, 1, 1
        else:
            ap, interior, top, left = self._padded(n, h, w, c, "pad0", x)
        interior.view(t, b, h, w, c).copy_(x.permute(0, 1, 3, 4, 2))
        saved: list[Tensor] = []
        dims: list[list[int]] = []
        a = interior
        for i in range(self.layers):
            weight = params[4 * i]
            o = weight.size(4) if gemm else weight.size(1)
            if self.native:
                hp, wp, ho, wo = h + 2, w + 2, h, w
                cols, wm = a, weight  # what the backward needs: the input and the weights
                z = self._conv(a, weight, gemm, t, b, "z" + str(i))
            else:
                hp, wp = ap.size(1), ap.size(2)
                ho, wo = (hp - 3) // self.stride + 1, (wp - 3) // self.stride + 1
                s = self.stride
                # im2col: the (kh, kw, c) patch of every output position, one strided copy.
                patches = ap.as_strided(
                    [n, ho, wo, 3, 3, c], [hp * wp * c, s * wp * c, s * c, wp * c, c, 1]
                )
                cols = self._buf("cols" + str(i), [n, ho, wo, 3, 3, c], x).copy_(patches)
                if gemm:
                    wm = weight.reshape(t, 9 * c, o)
                else:
                    wm = weight.permute(0, 3, 4, 2, 1).reshape(t, 9 * c, o)
                # z = cols @ W (the conv bias cancels in BatchNorm)
                z = torch.bmm(
                    cols.view(t, b * ho * wo, 9 * c),
                    wm,
                    out=self._buf("z" + str(i), [t, b * ho * wo, o], x),
                )
            m = b * ho * wo
            m_all = batch * ho * wo
            # Two-pass moments; z is centred in place and kept for the backward.
            total = z.sum(1, keepdim=True)
            if comm >= 0:
                total = self._allreduce(comm, rank, total)
            z.sub_(total / m_all)
            squares = torch.mul(z, z, out=self._buf("sq" + str(i), [t, m, o], x)).sum(
                1, keepdim=True
            )
            if comm >= 0:
                squares = self._allreduce(comm, rank, squares)
            r = squares.div_(m_all).add_(self.eps).rsqrt_()
            gamma = params[4 * i + 2].unsqueeze(1)
            beta = params[4 * i + 3].unsqueeze(1)
            scale = gamma * r
            last = i + 1 == self.layers
            ap_next, top_next, left_next = ap, top, left
            if self.pool or last or self.native:
                y = self._buf("y" + str(i), [n, ho, wo, o], x)
                torch.addcmul(beta, z, scale, out=y.view(t, m, o)).relu_()
                pooled, where = y, y
                if self.pool:
                    pooled, where = self._maxpool(y)
                if not last and not self.native:
                    ap_next, inner, top_next, left_next = self._padded(
                        n, pooled.size(1), pooled.size(2), o, "pad" + str(i + 1), x
                    )
                    inner.copy_(pooled)
            else:  # BN + ReLU written straight into the next layer's padded input
                ap_next, y, top_next, left_next = self._padded(n, ho, wo, o, "pad" + str(i + 1), x)
                torch.addcmul(
                    beta.view(t, 1, 1, 1, o),
                    z.view(t, b, ho, wo, o),
                    scale.view(t, 1, 1, 1, o),
                    out=y.view(t, b, ho, wo, o),
                ).relu_()
                pooled, where = y, y
            if keep:
                saved += [cols, wm, z, r, gamma, y, pooled, where]
                dims.append([hp, wp, top, left, n, h, w, c, m_all])
            a = pooled
            h, w, c = pooled.size(1), pooled.size(2), pooled.size(3)
            ap, top, left = ap_next, top_next, left_next
        feat = a.reshape(t, b, h * w * c)
        classifier = params[4 * self.layers]  # (T, N, C*H*W), NCHW flatten order
        nc = classifier.size(1)
        wc = classifier.view(t, nc, c, h, w).permute(0, 1, 3, 4, 2).reshape(t, nc, h * w * c)
        bias = params[4 * self.layers + 1].unsqueeze(1)
        logits = torch.baddbmm(bias, feat, wc.transpose(1, 2))
        if keep:
            saved += [feat, wc]
            dims.append([c, h, w])
        return logits, saved, dims

    @torch.jit.export
    def logits(self, params: list[Tensor], x: Tensor) -> Tensor:
        """Forward only: T-batched params (module layout), x (T, B, C, H, W) -> (T, B, N)."""
        return self._forward(params, x, False, False, -1, 0, x.size(1))[0]

    @torch.jit.export
    def loss_and_grad(
        self,
        params: list[Tensor],
        x: Tensor,
        y: Tensor,
        grads: list[Tensor],
        gemm: bool,
        comm: int,
        rank: int,
        batch: int,
        divisor: float,
    ) -> Tensor:
        """Cross-entropy per task (T,), summed over the mini-batch and divided by `divisor` (the
        batch size for the mean, 1 for the reference's sum); writes d loss / d params into `grads`.

        With workers splitting the images (`comm >= 0`) the loss and the conv / classifier
        gradients are this worker's share (the caller sums them); BatchNorm's are whole on rank 0
        and zero elsewhere.
        """
        t, b = x.size(0), x.size(1)
        layers = self.layers
        scores, saved, dims = self._forward(params, x, True, gemm, comm, rank, batch)
        # loss = sum_b (logsumexp(l_b) - l_b[y_b]) / D; dL/dl = (softmax - onehot) / D.
        lse = torch.logsumexp(scores, dim=2, keepdim=True)
        picked = scores.gather(2, y.unsqueeze(2))
        loss = (lse - picked).sum(dim=[1, 2]) / divisor
        g = (scores - lse).exp_()
        g.scatter_add_(2, y.unsqueeze(2), torch.full_like(picked, -1.0))
        if divisor != 1.0:
            g.div_(divisor)
        feat, wc = saved[-2], saved[-1]
        cf, hf, wf = dims[-1][0], dims[-1][1], dims[-1][2]
        grads[4 * layers + 1].copy_(g.sum(1))
        dwc = torch.bmm(g.transpose(1, 2), feat)  # (T, N, H*W*C), channels-last
        nc = dwc.size(1)
        grads[4 * layers].view(t, nc, cf, hf, wf).copy_(
            dwc.view(t, nc, hf, wf, cf).permute(0, 1, 4, 2, 3)
        )
        da = torch.bmm(g, wc).view(t * b, hf, wf, cf)
        for i in range(layers - 1, -1, -1):
            cols, wm, z, r, gamma, a, pooled, where = saved[8 * i : 8 * i + 8]
            hp, wp, top, left, n, h, w, c, m_all = dims[i]
            m, o = z.size(1), z.size(2)
            # dL/d(BN output) = dL/da * [a > 0] (the ReLU backward, one fused kernel); after a
            # pool it is applied to the 4x smaller pooled gradient, whose window maxima alone
            # receive anything (a maximum is > 0 exactly where its ReLU passes)
            if self.pool:
                gy = self._maxpool_backward(da, a, pooled, where).reshape(t, m, o)
            else:
                gy = torch.ops.aten.threshold_backward(da, a, 0.0).view(t, m, o)
            sums = torch.cat(
                [
                    gy.sum(1, keepdim=True),
                    torch.mul(gy, z, out=self._buf("sq" + str(i), [t, m, o], z)).sum(
                        1, keepdim=True
                    ),
                ],
                1,
            )
            if comm >= 0:
                sums = self._allreduce(comm, rank, sums)
            dbeta, sgz = sums[:, 0:1], sums[:, 1:2]
            # xhat = z r (z centred): dgamma = sum g xhat; dz = A g + Bc z + Cc per channel.
            dgamma = r * sgz
            ca = gamma * r
            cb = ca * r * dgamma * (-1.0 / m_all)
            cc = ca * dbeta * (-1.0 / m_all)
            dz = torch.addcmul(cc, z, cb, out=self._buf("dz" + str(i), [t, m, o], z))
            dz.addcmul_(gy, ca)
            if rank == 0:
                grads[4 * i + 2].copy_(dgamma.squeeze(1))
                grads[4 * i + 3].copy_(dbeta.squeeze(1))
            else:
                grads[4 * i + 2].zero_()
                grads[4 * i + 3].zero_()
            grads[4 * i + 1].zero_()  # the conv bias: BatchNorm cancels it exactly
            if self.native:
                da = self._conv_backward(dz, cols, wm, gemm, t, grads[4 * i], i > 0, str(i))
                continue
            dwm = torch.bmm(
                cols.view(t, m, 9 * c).transpose(1, 2),
                dz,
                out=self._buf("dw" + str(i), [t, 9 * c, o], z),
            )
            if gemm:
                grads[4 * i].copy_(dwm.view(t, 3, 3, c, o))
            else:
                grads[4 * i].copy_(dwm.view(t, 3, 3, c, o).permute(0, 4, 3, 1, 2))
            if i > 0:
                dcols = torch.bmm(
                    dz, wm.transpose(1, 2), out=self._buf("dcols" + str(i), [t, m, 9 * c], z)
                )
                dxp = self._col2im(dcols.view(cols.shape), hp, wp, "dxp" + str(i))
                da = dxp[:, top : top + h, left : left + w, :]
        return loss

    @torch.jit.export
    def adapt(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        flat: Tensor,
        partials: list[Tensor],
        total: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        denom: Tensor,
        xs: list[Tensor],
        ys: list[Tensor],
        losses: Tensor,
        hyper: list[float],
        step0: int,
        comm: int,
        rank: int,
        batch: int,
        lo: int,
        hi: int,
    ) -> None:
        """k inner steps in place on flat (T, P) buffers, as `reptorch.adapt.adapt` would take them.

        params / grads: per-parameter views (GEMM layout) of `flat` / `partials[rank]`. Each step:
        decay, loss and gradient, then the optimiser update of columns lo:hi (all of them for a
        single worker; each worker its share when they split the images, after summing the
        workers' partial gradients into `total`). hyper = [adam (0/1), lr, beta1, beta2, eps,
        weight_decay, loss divisor]. Adam: the ops of `inner_optim.Adam.step`, in the same order.
        """
        adam = hyper[0] > 0.0
        lr, beta1, beta2, eps, decay = hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
        divisor = hyper[6]
        p = flat[:, lo:hi]
        g = total[:, lo:hi]
        for j in range(len(xs)):
            if decay != 1.0:
                p.mul_(decay)
                if comm >= 0:
                    self._barrier(comm)
            loss = self.loss_and_grad(params, xs[j], ys[j], grads, True, comm, rank, batch, divisor)
            losses[j].copy_(loss)
            if comm >= 0:
                self._barrier(comm)
                torch.add(partials[0][:, lo:hi], partials[1][:, lo:hi], out=g)
                for other in partials[2:]:
                    g.add_(other[:, lo:hi])
            if adam:
                step = step0 + j + 1
                step_size = lr / (1.0 - beta1**step)
                bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
                m = g
                if beta1 != 0.0:  # with beta1 = 0, lerp(m, g, 1) is exactly g
                    m = exp_avg[:, lo:hi].lerp_(g, 1.0 - beta1)
                v = exp_avg_sq[:, lo:hi]
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                d = torch.sqrt(v, out=denom[:, lo:hi]).div_(bias_correction2_sqrt).add_(eps)
                p.addcdiv_(m, d, value=-step_size)
            else:
                p.add_(g, alpha=-lr)
            if comm >= 0:
                self._barrier(comm)
        if adam and beta1 == 0.0 and len(xs) > 0:
            exp_avg[:, lo:hi].copy_(g)  # the moment is the last gradient


class NativeCommKernel(ConvNetKernel):
    """`ConvNetKernel` whose workers meet through the native ops (`reptorch.fast.comm`): no
    call back into Python, so the scripted step never takes the GIL. Built only once
    `comm.native()` has loaded the ops (scripting resolves them)."""

    def _allreduce(self, comm: int, rank: int, value: Tensor) -> Tensor:
        return torch.ops.reptorch_comm.allreduce(comm, rank, value)

    def _barrier(self, comm: int) -> None:
        torch.ops.reptorch_comm.barrier(comm)
