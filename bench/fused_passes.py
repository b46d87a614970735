"""The pooled blocks' passes, ATen's ops against the fused native ones (`reptorch.fast.fused`),
per pass and layer of Mini-ImageNet's network, one thread, one worker's 5 images.

    python -m bench.fused_passes

Each pass: PyTorch's ops as the kernel's "aten" path runs them, then the fused op on the same
tensors; best of 5 rounds of 50 calls, alternating.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from reptorch.fast import fused

LAYERS = {"layer 1 (84x84x32)": 84, "layer 2 (42x42x32)": 42, "layer 3 (21x21x32)": 21}


def best_ms(call: Callable[[], object], calls: int = 50, rounds: int = 5) -> float:
    call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def passes(side: int, images: int = 5, channels: int = 32) -> dict[str, tuple[float, float]]:
    """{pass: (ATen ms, fused ms)} for one block of `images` images of side x side."""
    gen = torch.Generator().manual_seed(0)
    h = w = side
    z = torch.randn(1, images * h * w, channels, generator=gen)
    z -= z.mean(1, keepdim=True)
    scale = torch.rand(1, 1, channels, generator=gen) + 0.5
    beta = torch.randn(1, 1, channels, generator=gen)
    ho, wo = (h + 1) // 2, (w + 1) // 2
    g = torch.randn(images, ho, wo, channels, generator=gen)
    y = torch.empty_like(z)
    torch.addcmul(beta, z, scale, out=y).relu_()
    nchw = y.view(images, h, w, channels).permute(0, 3, 1, 2)
    window = ([2, 2], [2, 2], [0, 0], [1, 1], True)  # kernel, stride, padding, dilation, ceil
    pooled, index = torch.ops.aten.max_pool2d_with_indices(nchw, *window)
    pooled = pooled.permute(0, 2, 3, 1)
    mine = torch.empty(images, ho, wo, channels)
    where = torch.empty(mine.shape, dtype=torch.int32)
    ops = torch.ops.reptorch_fused
    ops.relu_pool(z, scale, beta, h, w, mine, where)
    dz, sq, zc = torch.empty_like(z), torch.empty_like(z), z.clone()

    def moments_aten() -> None:
        mean = z.sum(1, keepdim=True)
        torch.sub(z, mean, out=zc)
        torch.mul(zc, zc, out=sq).sum(1, keepdim=True)

    def moments_fused() -> None:
        ops.centre_squares(zc, ops.channel_sums(z) * 0.0)

    def forward_aten() -> None:
        torch.addcmul(beta, z, scale, out=y).relu_()
        torch.ops.aten.max_pool2d_with_indices(nchw, *window)

    def backward_aten() -> None:
        gp = torch.ops.aten.threshold_backward(g, pooled, 0.0)
        gy = torch.ops.aten.max_pool2d_with_indices_backward(
            gp.permute(0, 3, 1, 2), nchw, *window, index
        )
        gy = gy.permute(0, 2, 3, 1).reshape(z.shape)
        gz = torch.mul(gy, z, out=sq)
        torch.cat([gy.sum(1, keepdim=True), gz.sum(1, keepdim=True)], 1)
        torch.addcmul(beta, z, scale, out=dz).addcmul_(gy, scale)

    def backward_fused() -> None:
        ops.pool_bn_sums(g, mine, where, z, h, w)
        ops.pool_bn_dz(g, mine, where, z, scale, scale, beta, h, w, dz)

    return {
        "BatchNorm moments": (best_ms(moments_aten), best_ms(moments_fused)),
        "BatchNorm + ReLU + pool forward": (
            best_ms(forward_aten),
            best_ms(lambda: ops.relu_pool(z, scale, beta, h, w, mine, where)),
        ),
        "pool + ReLU + BatchNorm backward": (best_ms(backward_aten), best_ms(backward_fused)),
    }


def main() -> None:
    if not fused.available():
        raise SystemExit("the fused native ops did not build (g++ and ninja are needed)")
    torch.set_num_threads(1)
    print("| layer, pass | ATen ms | fused ms | ratio |\n|---|---|---|---|")
    for name, side in LAYERS.items():
        for what, (aten, mine) in passes(side).items():
            print(f"| {name}, {what} | {aten:.3f} | {mine:.3f} | {aten / mine:.2f}x |")


if __name__ == "__main__":
    main()
