"""The paper conv nets' forward and backward (the inner loop: `inner_loop`), in TorchScript.

The maths is the hand-written, autograd-free forward/backward described in `reptorch.fast.convnet`
(im2col + batched GEMM over tasks, merged BatchNorm + ReLU, channels-last activations); the layer
ops are `reptorch.fast.primitives`. Why TorchScript: a Python thread holds the GIL between PyTorch
calls, and one inner step is several hundred small calls, so two Python workers serialise on the
GIL (measured: two threads doing tiny ops took 2.4x as long as one). A scripted method runs its
whole body in C++ with the GIL released, so two workers really run in parallel. `torch.jit.script`
is deprecated in favour of `torch.compile`, which needs a C++ compiler at run time and still runs
its Python wrapper under the GIL; if scripting fails, the same class runs eagerly (slower, same
numbers; `REPTORCH_NO_JIT=1` forces it).

Parameter lists follow the module's order: for each block i, [conv.weight, conv.bias, norm.weight,
norm.bias] at 4i..4i+3, then classifier.weight, classifier.bias. With `gemm` the conv weights are
stored in GEMM layout, (T, 3, 3, C, O) instead of (T, O, C, 3, 3): the flat inner loop keeps them
so, which removes two permute-copies of every conv weight per step.

Slices. A step's images may be cut into S fixed slices (the run's `chain_workers`): every
per-image op runs on one slice, and what sums over images (BatchNorm's batch sums, the weight
gradients, the loss) is summed slice by slice in slice order. One call takes a list of slices:
one worker per slice, meeting in `_allreduce` / `_barrier` (`comm >= 0`: the native ops of
`reptorch.fast.comm` in `inner_loop.NativeCommKernel`, else Python calls, `torch.jit.ignore`),
or one worker taking them all in turn (`comm < 0`). Both do the same float operations on the
same shapes, so how many threads run the slices never changes a bit; only S does.
"""

import torch
from torch import Tensor

from reptorch.fast import comm as _comm
from reptorch.fast.primitives import KernelPrimitives


@torch.jit.ignore
def _allreduce(comm: int, rank: int, value: Tensor) -> Tensor:
    return _comm.allreduce(comm, rank, value)


@torch.jit.ignore
def _barrier(comm: int) -> None:
    _comm.barrier(comm)


def _key(name: str, s: int) -> str:
    """The scratch buffer `name` of this worker's slice s: every slice has its own."""
    return name + "." + str(s)


class ConvNetKernel(KernelPrimitives):
    """Batched-over-tasks loss, gradient and inner loop of a paper conv net (see module doc)."""

    def _allreduce(self, comm: int, rank: int, value: Tensor) -> Tensor:
        """The sum of `value` over the workers of group `comm` (Python meetings)."""
        return _allreduce(comm, rank, value)

    def _barrier(self, comm: int) -> None:
        _barrier(comm)

    def _reduce(self, comm: int, rank: int, parts: list[Tensor]) -> Tensor:
        """The sum over all slices of one per-slice partial sum: `parts` are this worker's, in
        slice order. value_0 + value_1 + ..., added in that order by a group's meeting or here,
        so one worker and S workers get the same bits."""
        if comm >= 0:
            return self._allreduce(comm, rank, parts[0])  # a worker per slice
        if len(parts) == 1:
            return parts[0]
        total = parts[0].clone()
        for part in parts[1:]:
            total.add_(part)
        return total

    def _forward(
        self,
        params: list[Tensor],
        xs: list[Tensor],
        keep: bool,
        gemm: bool,
        comm: int,
        rank: int,
        batch: int,
    ) -> tuple[list[Tensor], list[list[Tensor]], list[list[list[int]]]]:
        """Logits (T, B_s, N) of each slice x_s (T, B_s, C, H, W); with `keep`, per slice, what
        the backward needs.

        `batch`: images per task over all slices (BatchNorm's M counts them all).
        """
        t, c, h, w = xs[0].size(0), xs[0].size(2), xs[0].size(3), xs[0].size(4)
        slices = len(xs)
        pads: list[Tensor] = []  # per slice: the padded input of the layer (im2col)
        acts: list[Tensor] = []  # per slice: the layer's input, its interior
        top, left = 1, 1
        for s in range(slices):
            x = xs[s]
            n = t * x.size(1)
            if self.native:  # unpadded channels-last input: the convolution pads
                ap = self._buf(_key("in0", s), [n, h, w, c], x)
                interior = ap
            else:
                ap, interior, top, left = self._padded(n, h, w, c, _key("pad0", s), x)
            interior.view(t, x.size(1), h, w, c).copy_(x.permute(0, 1, 3, 4, 2))
            pads.append(ap)
            acts.append(interior)
        saved: list[list[Tensor]] = []
        dims: list[list[list[int]]] = []
        for _ in range(slices):
            saved.append(torch.jit.annotate(list[Tensor], []))
            dims.append(torch.jit.annotate(list[list[int]], []))
        for i in range(self.layers):
            weight = params[4 * i]
            o = weight.size(4) if gemm else weight.size(1)
            hp, wp, ho, wo = h + 2, w + 2, h, w
            if not self.native:
                hp, wp = pads[0].size(1), pads[0].size(2)
                ho, wo = (hp - 3) // self.stride + 1, (wp - 3) // self.stride + 1
            m_all = batch * ho * wo
            zs: list[Tensor] = []
            inputs: list[Tensor] = []  # what the backward needs: the input (or its columns)
            wm = weight
            totals: list[Tensor] = []
            for s in range(slices):
                a, ap = acts[s], pads[s]
                n, b = a.size(0), xs[s].size(1)
                if self.native:
                    cols = a
                    z = self._conv(a, weight, gemm, t, b, _key("z" + str(i), s))
                else:
                    cols = self._im2col(ap, ho, wo, _key("cols" + str(i), s))
                    if gemm:
                        wm = weight.reshape(t, 9 * c, o)
                    else:
                        wm = weight.permute(0, 3, 4, 2, 1).reshape(t, 9 * c, o)
                    # z = cols @ W (the conv bias cancels in BatchNorm)
                    z = torch.bmm(
                        cols.view(t, b * ho * wo, 9 * c),
                        wm,
                        out=self._buf(_key("z" + str(i), s), [t, b * ho * wo, o], a),
                    )
                zs.append(z)
                inputs.append(cols)
                totals.append(self._channel_sums(z))
            # Two-pass moments; z is centred in place and kept for the backward.
            mean = self._reduce(comm, rank, totals) / m_all
            squares: list[Tensor] = []
            for s in range(slices):
                squares.append(self._centre_squares(zs[s], mean, _key("sq" + str(i), s)))
            r, scale = self._bn_scale(self._reduce(comm, rank, squares), params[4 * i + 2], m_all)
            gamma = params[4 * i + 2].unsqueeze(1)
            beta = params[4 * i + 3].unsqueeze(1)
            last = i + 1 == self.layers
            for s in range(slices):
                z, n = zs[s], acts[s].size(0)
                ap_next, top_next, left_next = pads[s], top, left
                if self.pool or last or self.native:
                    if self.pool:
                        y, pooled, where = self._relu_pool(
                            z, scale, beta, n, ho, wo, _key("y" + str(i), s)
                        )
                    else:
                        y = self._buf(_key("y" + str(i), s), [n, ho, wo, o], z)
                        self._bn_relu(z, scale, beta, y, False)
                        pooled, where = y, y
                    if not last and not self.native:
                        ap_next, inner, top_next, left_next = self._padded(
                            n, pooled.size(1), pooled.size(2), o, _key("pad" + str(i + 1), s), z
                        )
                        inner.copy_(pooled)
                else:  # BN + ReLU written straight into the next layer's padded input
                    ap_next, y, top_next, left_next = self._padded(
                        n, ho, wo, o, _key("pad" + str(i + 1), s), z
                    )
                    self._bn_relu(z, scale, beta, y, True)
                    pooled, where = y, y
                if keep:
                    saved[s].extend([inputs[s], wm, z, r, gamma, y, pooled, where])
                    dims[s].append([hp, wp, top, left, n, h, w, c, m_all, ho, wo])
                acts[s] = pooled
                pads[s] = ap_next
                if s + 1 == slices:
                    top, left = top_next, left_next
            h, w, c = acts[0].size(1), acts[0].size(2), acts[0].size(3)
        classifier = params[4 * self.layers]  # (T, N, C*H*W), NCHW flatten order
        nc = classifier.size(1)
        wc = classifier.view(t, nc, c, h, w).permute(0, 1, 3, 4, 2).reshape(t, nc, h * w * c)
        bias = params[4 * self.layers + 1].unsqueeze(1)
        logits: list[Tensor] = []
        for s in range(slices):
            feat = acts[s].reshape(t, xs[s].size(1), h * w * c)
            logits.append(torch.baddbmm(bias, feat, wc.transpose(1, 2)))
            if keep:
                saved[s].extend([feat, wc])
                dims[s].append([c, h, w])
        return logits, saved, dims

    @torch.jit.export
    def logits(self, params: list[Tensor], x: Tensor) -> Tensor:
        """Forward only: T-batched params (module layout), x (T, B, C, H, W) -> (T, B, N)."""
        return self._forward(params, [x], False, False, -1, 0, x.size(1))[0][0]

    @torch.jit.export
    def loss_and_grad(
        self,
        params: list[Tensor],
        xs: list[Tensor],
        ys: list[Tensor],
        grads: list[list[Tensor]],
        gemm: bool,
        comm: int,
        rank: int,
        first: int,
        batch: int,
        divisor: float,
    ) -> list[Tensor]:
        """Cross-entropy per task (T,) of each slice (x_s, y_s), summed over its images and
        divided by `divisor` (the batch size for the mean, 1 for the reference's sum); writes
        the slice's share of d loss / d params into `grads[s]`.

        The loss and the conv / classifier gradients are the slice's share (the caller sums the
        slices); BatchNorm's are whole on slice 0 (`first` is the index of this call's first
        slice among all) and zero on the others.
        """
        t = xs[0].size(0)
        layers = self.layers
        slices = len(xs)
        scores, saved, dims = self._forward(params, xs, True, gemm, comm, rank, batch)
        losses: list[Tensor] = []
        das: list[Tensor] = []
        for s in range(slices):
            # loss = sum_b (logsumexp(l_b) - l_b[y_b]) / D; dL/dl = (softmax - onehot) / D.
            b, out = xs[s].size(1), grads[s]
            lse = torch.logsumexp(scores[s], dim=2, keepdim=True)
            picked = scores[s].gather(2, ys[s].unsqueeze(2))
            losses.append((lse - picked).sum(dim=[1, 2]) / divisor)
            g = (scores[s] - lse).exp_()
            g.scatter_add_(2, ys[s].unsqueeze(2), torch.full_like(picked, -1.0))
            if divisor != 1.0:
                g.div_(divisor)
            feat, wc = saved[s][-2], saved[s][-1]
            cf, hf, wf = dims[s][-1][0], dims[s][-1][1], dims[s][-1][2]
            out[4 * layers + 1].copy_(g.sum(1))
            dwc = torch.bmm(g.transpose(1, 2), feat)  # (T, N, H*W*C), channels-last
            nc = dwc.size(1)
            out[4 * layers].view(t, nc, cf, hf, wf).copy_(
                dwc.view(t, nc, hf, wf, cf).permute(0, 1, 4, 2, 3)
            )
            das.append(torch.bmm(g, wc).view(t * b, hf, wf, cf))
        for i in range(layers - 1, -1, -1):
            gys: list[Tensor] = []
            sums: list[Tensor] = []
            for s in range(slices):
                cols, wm, z, r, gamma, a, pooled, where = saved[s][8 * i : 8 * i + 8]
                m, o = z.size(1), z.size(2)
                # dL/d(BN output) = dL/da * [a > 0] (the ReLU backward, one fused kernel);
                # after a pool it is applied to the 4x smaller pooled gradient, whose window
                # maxima alone receive anything (a maximum is > 0 exactly where its ReLU passes)
                if self.pool:
                    ho, wo = dims[s][i][9], dims[s][i][10]
                    total, gy = self._pool_bn_sums(
                        das[s], a, pooled, where, z, ho, wo, _key("sq" + str(i), s)
                    )
                else:
                    total, gy = self._bn_sums(das[s], a, z, _key("sq" + str(i), s))
                sums.append(total)
                gys.append(gy)
            total = self._reduce(comm, rank, sums)
            dbeta = total[:, 0:1]
            r, gamma = saved[0][8 * i + 3], saved[0][8 * i + 4]
            dgamma, ca, cb, cc = self._bn_coefficients(total, r, gamma, dims[0][i][8])
            for s in range(slices):
                cols, wm, z = saved[s][8 * i], saved[s][8 * i + 1], saved[s][8 * i + 2]
                hp, wp, top, left, n, h, w, c = dims[s][i][:8]
                m, o = z.size(1), z.size(2)
                out = grads[s]
                dz = self._buf(_key("dz" + str(i), s), [t, m, o], z)
                if self.pool:
                    pooled, where = saved[s][8 * i + 6], saved[s][8 * i + 7]
                    ho, wo = dims[s][i][9], dims[s][i][10]
                    self._pool_bn_dz(gys[s], pooled, where, z, ca, cb, cc, ho, wo, dz)
                else:
                    self._bn_dz(gys[s], saved[s][8 * i + 5], z, ca, cb, cc, dz)
                if first + s == 0:
                    out[4 * i + 2].copy_(dgamma.squeeze(1))
                    out[4 * i + 3].copy_(dbeta.squeeze(1))
                else:
                    out[4 * i + 2].zero_()
                    out[4 * i + 3].zero_()
                out[4 * i + 1].zero_()  # the conv bias: BatchNorm cancels it exactly
                if self.native:
                    das[s] = self._conv_backward(
                        dz, cols, wm, gemm, t, out[4 * i], i > 0, _key(str(i), s)
                    )
                    continue
                dwm = torch.bmm(
                    cols.view(t, m, 9 * c).transpose(1, 2),
                    dz,
                    out=self._buf(_key("dw" + str(i), s), [t, 9 * c, o], z),
                )
                if gemm:
                    out[4 * i].copy_(dwm.view(t, 3, 3, c, o))
                else:
                    out[4 * i].copy_(dwm.view(t, 3, 3, c, o).permute(0, 4, 3, 1, 2))
                if i > 0:
                    dcols = torch.bmm(
                        dz,
                        wm.transpose(1, 2),
                        out=self._buf(_key("dcols" + str(i), s), [t, m, 9 * c], z),
                    )
                    dxp = self._col2im(dcols.view(cols.shape), hp, wp, _key("dxp" + str(i), s))
                    das[s] = dxp[:, top : top + h, left : left + w, :]
        return losses
