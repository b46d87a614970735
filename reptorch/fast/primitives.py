"""The layer primitives of the fast kernels: scratch buffers, 'same' padding, im2col and its
adjoint, PyTorch's own convolutions and max pooling, channels-last (N, H, W, C) throughout.

`reptorch.fast.kernel.ConvNetKernel` builds the paper nets' forward, backward and inner loop from
these; they are TorchScript methods of one base module so that the whole step scripts as one.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KernelPrimitives(nn.Module):
    """Scratch buffers and per-layer ops shared by the fast kernels (see module doc).

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

    def _im2col(self, ap: Tensor, ho: int, wo: int, key: str) -> Tensor:
        """The (kh, kw, c) patch of every output position of the padded (N, Hp, Wp, C) input:
        (N, Ho, Wo, 3, 3, C) in buffer `key`, one strided copy."""
        n, hp, wp, c = ap.size(0), ap.size(1), ap.size(2), ap.size(3)
        st = self.stride
        patches = ap.as_strided(
            [n, ho, wo, 3, 3, c], [hp * wp * c, st * wp * c, st * c, wp * c, c, 1]
        )
        cols = self._buf(key, [n, ho, wo, 3, 3, c], ap)
        cols.copy_(patches)
        return cols

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

    def _channel_sums(self, z: Tensor) -> Tensor:
        """(T, 1, C): sum over M of z (T, M, C), BatchNorm's first moment."""
        return z.sum(1, keepdim=True)

    def _centre_squares(self, z: Tensor, mean: Tensor, key: str) -> Tensor:
        """z -= mean in place; (T, 1, C): the sum over M of the centred z squared."""
        z.sub_(mean)
        sq = self._buf(key, [z.size(0), z.size(1), z.size(2)], z)
        return torch.mul(z, z, out=sq).sum(1, keepdim=True)

    def _bn_scale(self, squares: Tensor, gamma: Tensor, m: int) -> tuple[Tensor, Tensor]:
        """r = rsqrt(var + eps), var = squares / M (T, 1, C; `squares` is overwritten), and the
        BatchNorm scale gamma r (gamma: the (T, C) parameter): (r, scale)."""
        r = squares.div_(m).add_(self.eps).rsqrt_()
        return r, gamma.unsqueeze(1) * r

    def _bn_coefficients(
        self, total: Tensor, r: Tensor, gamma: Tensor, m: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """BatchNorm's backward per channel from total = [sum gy, sum gy z] (T, 2, C), z centred
        so that xhat = z r: dgamma = sum gy xhat, and dz = ca gy + cb z + cc with ca = gamma r,
        cb = -ca r dgamma / M, cc = -ca sum gy / M: (dgamma, ca, cb, cc)."""
        dbeta, sgz = total[:, 0:1], total[:, 1:2]
        dgamma = r * sgz
        ca = gamma * r
        return dgamma, ca, ca * r * dgamma * (-1.0 / m), ca * dbeta * (-1.0 / m)

    def _bn_relu(self, z: Tensor, scale: Tensor, beta: Tensor, y: Tensor, padded: bool) -> None:
        """y = relu(beta + z scale) into y (N, H, W, C): a view into the next layer's padded
        input (`padded`) or a whole buffer."""
        t, o = z.size(0), z.size(2)
        if padded:
            n, h, w = y.size(0), y.size(1), y.size(2)
            torch.addcmul(
                beta.view(t, 1, 1, 1, o),
                z.view(t, n // t, h, w, o),
                scale.view(t, 1, 1, 1, o),
                out=y.view(t, n // t, h, w, o),
            ).relu_()
        else:
            torch.addcmul(beta, z, scale, out=y.view(z.size())).relu_()

    def _bn_sums(self, g: Tensor, y: Tensor, z: Tensor, key: str) -> tuple[Tensor, Tensor]:
        """The ReLU backward of dL/dy `g`, gy = g [y > 0] (T, M, C), and BatchNorm's backward
        sums (T, 2, C) = [sum_m gy, sum_m gy z]: (sums, gy)."""
        gy = torch.ops.aten.threshold_backward(g, y, 0.0).view(z.size())
        return self._gy_sums(gy, z, key), gy

    def _gy_sums(self, gy: Tensor, z: Tensor, key: str) -> Tensor:
        """BatchNorm's backward sums (T, 2, C) = [sum_m gy, sum_m gy z] (gy z into buffer `key`)."""
        gz = torch.mul(gy, z, out=self._buf(key, [z.size(0), z.size(1), z.size(2)], z))
        return torch.cat([gy.sum(1, keepdim=True), gz.sum(1, keepdim=True)], 1)

    def _bn_dz(
        self, gy: Tensor, y: Tensor, z: Tensor, ca: Tensor, cb: Tensor, cc: Tensor, dz: Tensor
    ) -> None:
        """dz = cc + z cb + gy ca, BatchNorm's backward (gy from `_bn_sums`)."""
        torch.addcmul(cc, z, cb, out=dz).addcmul_(gy, ca)

    def _relu_pool(
        self, z: Tensor, scale: Tensor, beta: Tensor, n: int, h: int, w: int, key: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """y = relu(beta + z scale) as (N, H, W, C), its 2x2 max pool (N, Ho, Wo, C) and the
        argmax of each window (what `_pool_bn_sums` and `_pool_bn_dz` take): (y, pooled, where)."""
        y = self._buf(key, [n, h, w, z.size(2)], z)
        torch.addcmul(beta, z, scale, out=y.view(z.size())).relu_()
        pooled, where = self._maxpool(y)
        return y, pooled, where

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
        """The pool + ReLU backward of dL/dpooled `g`, gy = dL/d(BN output) (T, M, C), and
        BatchNorm's backward sums (T, 2, C) = [sum_m gy, sum_m gy z]: (sums, gy). h, w: y's
        side (before the pool)."""
        gy = self._maxpool_backward(g, y, pooled, where).reshape(z.size())
        return self._gy_sums(gy, z, key), gy

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
        """dz = cc + z cb + gy ca, BatchNorm's backward (gy from `_pool_bn_sums`)."""
        self._bn_dz(gy, pooled, z, ca, cb, cc, dz)

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
