"""The machine's measured SGEMM rate and the FLOP count of the paper's networks."""

from __future__ import annotations

import math
import time

import torch


def sgemm_gflops(size: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Best-of-`repeats` fp32 GEMM rate (2 n^3 FLOP per n x n product), in GFLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def conv_net_forward_flops(
    image: int, channels: int, filters: int, classes: int, stride: int, pool: bool
) -> int:
    """Multiply-add FLOP (x2) of one image through 4 x [conv 3x3 'same'] + linear (convs only)."""
    total, size, cin = 0, image, channels
    for _ in range(4):
        out = math.ceil(size / stride)
        total += 2 * out * out * 9 * cin * filters
        size, cin = (math.ceil(out / 2) if pool else out), filters
    return total + 2 * size * size * filters * classes
