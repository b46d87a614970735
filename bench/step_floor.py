"""The exact chain's limit on Omniglot: its GEMMs alone, against the whole meta-iteration.

    python -m bench.step_floor --settings 5w1s,20w1s     # docs/benchmarks.md, issue 18

For each setting, in one process and one run:

1. the GEMMs of one worker's inner step (the default's slice: 10 images for 5w1s on one
   worker, 10 of 20 for 20w1s on two), recorded once from the eager kernel (a dispatch mode
   keeps each call's overload, shapes, strides and scalars) and then replayed alone, one
   thread, on operands of the same layout, so no allocation, interpreter or other op is
   counted: the arithmetic floor of a step;
2. the scripted fused step (`loss_and_grad`, no optimiser), one thread, alone and with a
   second thread running the same step at the same time (the two workers' case);
3. the exact default meta-iteration and the plain `nn.Module` + `torch.optim.Adam` loop,
   interleaved rounds (`bench.run`).

A meta-iteration runs meta_batch x inner_iters steps on each worker in turn, so if everything
but the GEMMs were free it would take steps x floor: that bounds the exact chain's it/s and its
ratio to the plain loop whatever is fused or rewritten, as long as the step keeps these GEMM
shapes (which fix its float rounding: the slices are the run's trajectory).
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.gemm import sgemm_gflops
from bench.step_profile import kernel_class, step_arguments
from bench.steps import SETTINGS, Setting, baseline_step, key, reptorch_step, with_threads
from reptorch.chain_threads import resolve_chain_workers

aten = torch.ops.aten
GEMMS = (aten.bmm, aten.baddbmm, aten.mm, aten.addmm)


def step_call(s: Setting, images: int):
    """The scripted and eager fused kernels and the arguments of one step of `images`."""
    spec, call = step_arguments(s, images)
    eager = kernel_class("fused")(*spec.kernel_shape())
    return torch.jit.script(eager), eager, call


class _GemmRecorder(TorchDispatchMode):
    """Keeps each GEMM call's overload, operands' shapes and strides, and scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, list[object], dict[str, object]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in GEMMS:
            keywords = {k: _spec(v) for k, v in kwargs.items()}
            self.calls.append((func, [_spec(a) for a in args], keywords))
        return func(*args, **kwargs)


def _spec(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype)
    return value


def _make(value: object) -> object:
    if isinstance(value, tuple) and value and value[0] == "tensor":
        _, shape, stride, dtype = value
        return torch.empty_strided(shape, stride, dtype=dtype).uniform_()
    return value


def recorded_gemms(eager, call) -> list[tuple[object, list[object], dict[str, object]]]:
    """The GEMM calls of one eager step, in order, as (overload, operands, keywords)."""
    eager.loss_and_grad(*call)
    recorder = _GemmRecorder()
    with recorder:
        eager.loss_and_grad(*call)
    return recorder.calls


def gemm_flop(gemms) -> float:
    """2 x b x m x k x n summed over the calls (the last two tensor operands multiply)."""
    total = 0
    for _, args, _ in gemms:
        a, b = [x[1] for x in args if isinstance(x, tuple) and x and x[0] == "tensor"][-2:]
        total += 2 * math.prod(a) * b[-1]
    return total


def replay(gemms):
    """A function running the recorded GEMMs alone, on operands of the same layout, into
    preallocated outputs where the step wrote into one (`out=` overloads)."""
    calls = [(func, [_make(a) for a in args], {k: _make(v) for k, v in kw.items()})
             for func, args, kw in gemms]  # fmt: skip

    def run() -> None:
        for func, args, kw in calls:
            func(*args, **kw)

    return run


def ms_per_call(fn, repeats: int) -> float:
    """Mean ms of `repeats` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats


def ms_per_pair(first, second, repeats: int) -> float:
    """As `ms_per_call`, with two threads calling at once (until both are done): what the two
    workers' steps cost each other on shared caches and memory."""
    threads = [threading.Thread(target=lambda f=f: [f() for _ in range(repeats)])
               for f in (first, second)]  # fmt: skip
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1e3 * (time.perf_counter() - start) / repeats


def measure(s: Setting, rounds: int) -> dict[str, float]:
    """Median over `rounds` of each measurement, all of them alternating round by round (this
    host's speed drifts by tens of percent within minutes)."""
    workers = resolve_chain_workers(0, s.network(), True, images=s.inner_batch)
    images = s.inner_batch // workers
    scripted, eager, call = step_call(s, images)
    other, _, other_call = step_call(s, images)
    gemms = recorded_gemms(eager, call)
    floor, step = replay(gemms), lambda: scripted.loss_and_grad(*call)
    second = lambda: other.loss_and_grad(*other_call)  # noqa: E731
    exact = reptorch_step(s, torch.device("cpu"), "exact")
    plain = baseline_step(s, torch.device("cpu"))
    per_round = 4 if s.ways == 20 else 10
    runs = {
        "floor_ms": with_threads(lambda: ms_per_call(floor, 100), 1),
        "step_ms": with_threads(lambda: ms_per_call(step, 100), 1),
        "pair_ms": with_threads(lambda: ms_per_pair(step, second, 100), 1),
        "exact_s": lambda: ms_per_call(lambda: exact(0), per_round) / 1e3,
        "plain_s": lambda: ms_per_call(lambda: plain(0), per_round) / 1e3,
    }
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update(workers=workers, images=images, gemms=len(gemms), steps=s.meta_batch * s.inner_iters)
    out["gemm_gflop"] = gemm_flop(gemms) / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="5w1s,20w1s", help="Omniglot settings")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    wanted = args.settings.split(",")
    chosen = [s for s in SETTINGS if key(s) in wanted and s.dataset == "omniglot"]
    if len(chosen) != len(wanted):
        raise SystemExit(f"--settings: Omniglot settings only, from 5w1s, 5w5s, 20w1s: {wanted}")
    print(f"SGEMM {sgemm_gflops():.0f} GFLOP/s (2 threads), torch {torch.__version__}")
    print(
        "| setting | worker's step | GEMMs | floor ms (GFLOP/s) | scripted step ms"
        " | two at once ms | meta-iteration s: exact | steps x floor | steps x step"
        " | steps x two at once | plain loop | exact / plain | bound if only GEMMs remained |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in chosen:
        m = measure(s, args.rounds)
        bound_s = m["steps"] * m["floor_ms"] / 1e3
        print(
            f"| {s.name} | {m['images']} images x {m['workers']} worker(s) | {m['gemms']}"
            f" | {m['floor_ms']:.2f} ({m['gemm_gflop'] / m['floor_ms'] * 1e3:.0f})"
            f" | {m['step_ms']:.2f} | {m['pair_ms']:.2f}"
            f" | {m['exact_s']:.3f} ({1 / m['exact_s']:.2f} it/s)"
            f" | {bound_s:.3f} | {m['steps'] * m['step_ms'] / 1e3:.3f}"
            f" | {m['steps'] * m['pair_ms'] / 1e3:.3f}"
            f" | {m['plain_s']:.3f} | {m['plain_s'] / m['exact_s']:.2f}x"
            f" | {1 / bound_s:.2f} it/s, {m['plain_s'] / bound_s:.2f}x |"
        )


if __name__ == "__main__":
    main()
