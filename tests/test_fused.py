"""The fused pooled-block ops (`reptorch/fast/csrc/fused.cpp`) against the ATen ops they replace.

Where the op does the same float operations in the same order the check is bitwise; the sums,
which accumulate in double, are checked against float64 sums of the same values.
"""

import os

import pytest
import torch

from reptorch.fast import fused


@pytest.fixture(autouse=True)
def native_ops():
    """The ops are built on first use (required where CI runs: it has a compiler)."""
    if not fused.available():
        if os.environ.get("CI") == "true":
            pytest.fail("the fused native ops did not build")
        pytest.skip("no C++ compiler: no fused ops")


ops = torch.ops.reptorch_fused
# PyTorch's vectorised addcmul rounds as one fused multiply-add on AVX2 / AVX-512, and the ops
# are built to match there (`fused.flags`); elsewhere the claim is equality to rounding.
FMA = "-mfma" in fused.flags()


def assert_atens(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """`ours` is bitwise ATen's result where both use FMA, else equal to float rounding."""
    if FMA:
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs)


def block(t: int, b: int, h: int, w: int, c: int, dtype: torch.dtype, seed: int = 0):
    """A centred pre-BatchNorm z (T, B*H*W, C), per-task scale / shift, dL/dpooled."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(t, b * h * w, c, generator=gen, dtype=dtype)
    z -= z.mean(1, keepdim=True)
    scale = torch.rand(t, 1, c, generator=gen, dtype=dtype) + 0.5
    beta = torch.randn(t, 1, c, generator=gen, dtype=dtype) * 0.5
    g = torch.randn(t * b, (h + 1) // 2, (w + 1) // 2, c, generator=gen, dtype=dtype)
    return z, scale, beta, g


def aten_forward(z, scale, beta, t, b, h, w, c):
    y = torch.addcmul(beta, z, scale).relu_().view(t * b, h, w, c)
    pooled, where = torch.ops.aten.max_pool2d_with_indices(
        y.permute(0, 3, 1, 2), [2, 2], [2, 2], [0, 0], [1, 1], True
    )
    return y, pooled.permute(0, 2, 3, 1), where


def fused_forward(z, scale, beta, t, b, h, w, c):
    pooled = z.new_empty(t * b, (h + 1) // 2, (w + 1) // 2, c)
    where = torch.empty(pooled.shape, dtype=torch.int32)
    ops.relu_pool(z, scale, beta, h, w, pooled, where)
    return pooled, where


SHAPES = [(2, 3, 84, 84, 32), (1, 5, 21, 21, 8), (3, 2, 11, 7, 5), (1, 1, 1, 1, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_pool_is_bitwise_atens_relu_and_pool(shape, dtype):
    t, b, h, w, c = shape
    z, scale, beta, _ = block(t, b, h, w, c, dtype)
    y, pooled, where = aten_forward(z, scale, beta, t, b, h, w, c)
    ours, cell = fused_forward(z, scale, beta, t, b, h, w, c)
    assert_atens(ours, pooled)
    # `where` names the window's cell that PyTorch's argmax index names (first maximum)
    row, col = where.permute(0, 2, 3, 1) // w, where.permute(0, 2, 3, 1) % w
    oh = torch.arange(pooled.size(1)).view(1, -1, 1, 1)
    ow = torch.arange(pooled.size(2)).view(1, 1, -1, 1)
    assert torch.equal(cell.long(), 2 * (row - 2 * oh) + (col - 2 * ow))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_pool_backward_sums_and_dz_match_aten(shape, dtype):
    t, b, h, w, c = shape
    z, scale, beta, g = block(t, b, h, w, c, dtype, seed=1)
    y, pooled, where = aten_forward(z, scale, beta, t, b, h, w, c)
    # the ATen backward of the kernel: ReLU (on pooled), pool, then BatchNorm's sums and dz
    gp = torch.ops.aten.threshold_backward(g, pooled, 0.0)
    gy = (
        torch.ops.aten.max_pool2d_with_indices_backward(
            gp.permute(0, 3, 1, 2),
            y.permute(0, 3, 1, 2),
            [2, 2],
            [2, 2],
            [0, 0],
            [1, 1],
            True,
            where,
        )
        .permute(0, 2, 3, 1)
        .reshape(t, -1, c)
    )
    ours_pooled, cell = fused_forward(z, scale, beta, t, b, h, w, c)
    sums = ops.pool_bn_sums(g, ours_pooled, cell, z, h, w)
    gd = gy.double()
    exact = torch.cat([gd.sum(1, keepdim=True), (gd * z.double()).sum(1, keepdim=True)], 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(sums.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())
    ca, cb, cc = (torch.randn(t, 1, c, dtype=dtype) for _ in range(3))
    dz = torch.empty_like(z)
    ops.pool_bn_dz(g, ours_pooled, cell, z, ca, cb, cc, h, w, dz)
    expected = torch.addcmul(cc, z, cb).addcmul_(gy, ca)
    assert_atens(dz, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batchnorm_sums_are_the_float64_sums(dtype):
    z, *_ = block(2, 3, 21, 21, 8, dtype)
    z = z + 3.0  # an uncentred z
    sums = ops.channel_sums(z)
    torch.testing.assert_close(sums.double(), z.double().sum(1, keepdim=True), rtol=1e-6, atol=1e-4)
    mean = sums / z.size(1)
    centred = z - mean
    squares = ops.centre_squares(z, mean)
    assert torch.equal(z, centred)  # in place, the same float subtraction
    torch.testing.assert_close(
        squares.double(), (centred.double() ** 2).sum(1, keepdim=True), rtol=1e-6, atol=1e-6
    )


def test_bad_shapes_are_refused_with_a_message():
    z, scale, beta, g = block(1, 2, 8, 8, 4, torch.float32)
    pooled = z.new_empty(2, 3, 4, 4)  # wrong Ho
    where = torch.empty(pooled.shape, dtype=torch.int32)
    with pytest.raises(Exception, match="pooled must be"):
        ops.relu_pool(z, scale, beta, 8, 8, pooled, where)


def padded_view(n: int, h: int, w: int, c: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A (N, H, W, C) interior view of a zero-bordered (N, H+3, W+2, C) buffer, as the kernel
    writes the next layer's padded input and reads the gradient of its col2im buffer."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.zeros(n, h + 3, w + 2, c, dtype=dtype)
    buf[:, 1 : h + 1, 1 : w + 1].copy_(torch.randn(n, h, w, c, generator=gen, dtype=dtype))
    return buf[:, 1 : h + 1, 1 : w + 1]


PLAIN = [(5, 2, 14, 14, 64), (1, 20, 7, 7, 64), (2, 3, 4, 4, 5), (1, 1, 1, 1, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", PLAIN)
def test_plain_block_passes_match_aten(shape, dtype):
    """bn_relu writes ATen's addcmul + relu_ bitwise into a strided view; bn_sums gives the
    float64 sums of ATen's ReLU backward; bn_dz is ATen's two addcmuls bitwise."""
    t, b, h, w, c = shape
    z, scale, beta, _ = block(t, b, h, w, c, dtype, seed=2)
    y = padded_view(t * b, h, w, c, dtype, seed=3)
    ops.bn_relu(z, scale, beta, y)
    expected = torch.addcmul(beta, z, scale).relu_().view(t * b, h, w, c)
    assert_atens(y, expected)
    g = padded_view(t * b, h, w, c, dtype, seed=4)
    gy = torch.ops.aten.threshold_backward(g, y, 0.0).reshape(t, -1, c)
    gd = gy.double()
    exact = torch.cat([gd.sum(1, keepdim=True), (gd * z.double()).sum(1, keepdim=True)], 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    sums = ops.bn_sums(g, y, z)
    torch.testing.assert_close(sums.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())
    ca, cb, cc = (torch.randn(t, 1, c, dtype=dtype) for _ in range(3))
    dz = torch.empty_like(z)
    ops.bn_dz(g, y, z, ca, cb, cc, dz)
    assert_atens(dz, torch.addcmul(cc, z, cb).addcmul_(gy, ca))


def test_relu_keeps_nan_and_negative_zero_as_atens():
    z = torch.tensor([[[float("nan"), -0.0, -1.0, 2.0, 0.0, -3.0, 1.0, -0.5]]])
    one, zero = torch.ones(1, 1, 8), torch.full((1, 1, 8), -0.0)  # -0.0 + -0.0 = -0.0
    y = torch.empty(1, 1, 1, 8)
    ops.bn_relu(z, one, zero, y)
    expected = torch.addcmul(zero, z, one).relu_().view(1, 1, 1, 8)
    assert torch.equal(y.isnan(), expected.isnan())
    finite = ~expected.isnan()
    assert torch.equal(y[finite], expected[finite])
    assert torch.equal(torch.signbit(y[finite]), torch.signbit(expected[finite]))
    assert torch.signbit(expected[0, 0, 0, 1])  # the case is really there


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 32, 70560), (5, 64, 1960), (3, 7, 11)])
def test_batchnorm_coefficients_are_bitwise_the_kernels_expressions(shape, dtype):
    """bn_scale and bn_coefficients against the expressions of `KernelPrimitives` they replace."""
    t, c, m_all = shape
    gen = torch.Generator().manual_seed(6)
    squares = torch.rand(t, 1, c, generator=gen, dtype=dtype) * m_all
    gamma = torch.rand(t, c, generator=gen, dtype=dtype) + 0.5
    r = squares.clone().div_(m_all).add_(1e-3).rsqrt_()
    scale = gamma.unsqueeze(1) * r
    ours_r, ours_scale = ops.bn_scale(squares, gamma, m_all, 1e-3)
    assert torch.equal(ours_r, r) and torch.equal(ours_scale, scale)
    total = torch.randn(t, 2, c, generator=gen, dtype=dtype)
    dbeta, sgz, g = total[:, 0:1], total[:, 1:2], gamma.unsqueeze(1)
    dgamma = r * sgz
    ca = g * r
    expected = (dgamma, ca, ca * r * dgamma * (-1.0 / m_all), ca * dbeta * (-1.0 / m_all))
    for ours, theirs in zip(ops.bn_coefficients(total, r, g, m_all), expected, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n, ho, wo, c, stride", [(10, 7, 7, 64, 2), (20, 4, 4, 64, 2), (3, 5, 4, 5, 1), (1, 1, 1, 3, 2)]
)
def test_col2im_is_bitwise_the_nine_strided_adds(n, ho, wo, c, stride, dtype):
    """One pass, each element's taps added in PyTorch's tap order from +0.0: the same bits as
    `KernelPrimitives._col2im` (adds only, so on any machine), -0.0 included."""
    from reptorch.fast.primitives import KernelPrimitives

    gen = torch.Generator().manual_seed(7)
    dcols = torch.randn(n, ho, wo, 3, 3, c, generator=gen, dtype=dtype)
    dcols[0, 0, 0, 0, 0, 0] = -0.0  # 0.0 + -0.0 is +0.0 in both
    hp, wp = stride * (ho - 1) + 3, stride * (wo - 1) + 3
    expected = KernelPrimitives(stride, False, 4, 1e-3, False)._col2im(dcols, hp, wp, "dxp")
    dxp = torch.full((n, hp, wp, c), float("nan"), dtype=dtype)  # every element is written
    ops.col2im(dcols, stride, dxp)
    assert torch.equal(dxp, expected)
    assert not torch.signbit(dxp[0, 0, 0, 0])
    with pytest.raises(Exception, match="dxp must hold every window of dcols"):
        ops.col2im(dcols, stride, dxp[:, :-1].contiguous())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n, ho, wo, c, stride", [(10, 14, 14, 1, 2), (10, 7, 7, 64, 2), (3, 5, 4, 5, 1)]
)
def test_im2col_is_the_strided_copy(n, ho, wo, c, stride, dtype):
    from reptorch.fast.primitives import KernelPrimitives

    hp, wp = stride * (ho - 1) + 3, stride * (wo - 1) + 3
    ap = torch.randn(n, hp, wp, c, generator=torch.Generator().manual_seed(8), dtype=dtype)
    expected = KernelPrimitives(stride, False, 4, 1e-3, False)._im2col(ap, ho, wo, "cols")
    cols = torch.full((n, ho, wo, 3, 3, c), float("nan"), dtype=dtype)
    ops.im2col(ap, stride, cols)
    assert torch.equal(cols, expected)
    with pytest.raises(Exception, match="ap must hold every window of cols"):
        ops.im2col(ap[:, :-1].contiguous(), stride, cols)


@pytest.mark.parametrize("ways, images", [(5, 10), (20, 10)])
def test_the_native_im2col_and_col2im_keep_the_fused_kernels_bits(ways, images):
    """Omniglot's fused step with the native im2col and col2im against the same step with
    PyTorch's strided copy and nine adds: bitwise the same loss and gradients, so runs on the
    fused passes keep their trajectories."""
    from reptorch.fast.oracle import spec_for, to_gemm
    from reptorch.fast.primitives import KernelPrimitives
    from reptorch.models import OmniglotNet

    class NineAdds(fused.FusedKernel):
        _im2col = KernelPrimitives._im2col
        _col2im = KernelPrimitives._col2im

    torch.manual_seed(0)
    net = OmniglotNet(ways)
    spec = spec_for(net)
    shape = (spec.stride, spec.pool, spec.layers, spec.eps, spec.native_convolutions())
    names = spec.names()
    params = {
        k: to_gemm(k, v.detach()[None].clone(), batched=True) for k, v in net.named_parameters()
    }
    x = torch.rand(1, images, 1, 28, 28)
    y = torch.randint(0, ways, (1, images))
    results = []
    for kind in (fused.FusedKernel, NineAdds):
        kernel = torch.jit.script(kind(*shape))
        grads = [torch.empty_like(params[k]) for k in names]
        call = ([params[k] for k in names], [x], [y], [grads], True, -1, 0, 0, images, 1.0)
        results.append((kernel.loss_and_grad(*call), grads))
    (loss, grads), (loss_adds, grads_adds) = results
    assert torch.equal(loss[0], loss_adds[0])
    for name, ours, theirs in zip(names, grads, grads_adds, strict=True):
        assert torch.equal(ours, theirs), name
