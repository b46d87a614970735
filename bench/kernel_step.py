"""One inner step of the scripted kernels, PyTorch's block passes against the fused ones
(`reptorch.fast.fused`), one thread, alternating in one process (docs/benchmarks.md).

    python -m bench.kernel_step --setting 5w1s --images 10
    python -m bench.kernel_step --setting 20w1s --images 10   # one worker's slice of 20
    python -m bench.kernel_step --setting mini --images 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.step_profile import step_arguments
from bench.steps import SETTINGS, key
from reptorch.fast import fused
from reptorch.fast.inner_loop import InnerLoopKernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="5w1s", help="5w1s, 20w1s or mini")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not fused.available():
        raise SystemExit("the fused native ops did not build (g++ and ninja are needed)")
    torch.set_num_threads(1)
    s = next(x for x in SETTINGS if key(x) == args.setting)
    spec, call = step_arguments(s, args.images)
    kernels = {
        "aten": torch.jit.script(InnerLoopKernel(*spec.kernel_shape())),
        "fused": torch.jit.script(fused.FusedKernel(*spec.kernel_shape())),
    }
    steps = 30 if s.dataset == "miniimagenet" else 200
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for kernel in kernels.values():
        for _ in range(5):
            kernel.loss_and_grad(*call)
    for _ in range(args.rounds):
        for name, kernel in kernels.items():
            start = time.perf_counter()
            for _ in range(steps):
                kernel.loss_and_grad(*call)
            times[name].append(1e3 * (time.perf_counter() - start) / steps)
    aten, mine = (statistics.median(times[k]) for k in ("aten", "fused"))
    print(
        f"{s.name}, {args.images} images: aten {aten:.3f} ms, fused {mine:.3f} ms per step,"
        f" {aten / mine:.2f}x"
    )


if __name__ == "__main__":
    main()
