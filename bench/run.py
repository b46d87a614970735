"""Speed benchmark (issue 5): reptorch vs a straightforward serial PyTorch Reptile, in one run.

    python -m bench.run --quick            # a minute: fewer rounds, smaller evaluation sample
    python -m bench.run                    # the figures of docs/benchmarks.md
    python -m bench.run --memory-iters 10000   # RSS over a long meta-training run

Measures (a) reptorch's meta-training throughput (the library's public step: `MetaLearner` +
`Reptile` + inner `Adam`, all defaults, so the `reptorch.fast` oracle and its own inner loop) for
Omniglot 5w1s, 5w5s and 20w1s with the paper's settings, (b) the same for
`bench.baseline.SerialReptile`, (c) the evaluation throughput (5w1s, 50 inner Adam steps of batch
5, transductive and not, through `reptorch.adapt.adapt` as `reptorch eval` runs it), (d) SGEMM.
Implementations are timed in interleaved rounds and the median round is reported, because the
machine may be shared. The data are synthetic tensors of the right shapes (sampling excluded).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.baseline import SerialReptile
from bench.gemm import omniglot_train_flops, sgemm_gflops
from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms.reptile import Reptile
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.losses import cross_entropy_sum
from reptorch.meta import MetaLearner
from reptorch.models import OmniglotNet
from reptorch.outer import Interpolation


@dataclass(frozen=True)
class Setting:
    """Meta-training settings of the paper (docs/paper-reference.md, section 4)."""

    name: str
    ways: int
    inner_batch: int
    inner_iters: int
    lr: float
    meta_batch: int = 5


SETTINGS = [
    Setting("Omniglot 5w1s", 5, 10, 5, 1e-3),
    Setting("Omniglot 5w5s", 5, 10, 5, 1e-3),  # training is identical to 5w1s (shots: eval only)
    Setting("Omniglot 20w1s", 20, 20, 10, 5e-4),
]


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_batches(s: Setting, count: int, device: torch.device, seed: int = 0):
    """`count` meta-batches xs (T, k, B, 1, 28, 28) in [0, 1], ys (T, k, B) in [0, ways)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (count, s.meta_batch, s.inner_iters, s.inner_batch)
    xs = (torch.rand(*shape, 1, 28, 28, generator=gen) > 0.2).float()
    ys = torch.randint(0, s.ways, shape, generator=gen)
    return xs.to(device), ys.to(device)


def reptorch_step(s: Setting, device: torch.device, mode: str = "library") -> Callable[[int], None]:
    """The library's training step: `MetaLearner` + `Reptile` + inner `Adam`.

    mode: 'library' (the `reptorch.fast` oracle with its own inner loop, the tasks of a
    meta-batch side by side from one merged inner state), 'exact' (the reference's semantics,
    `parallel='loop'`: the tasks in sequence threading one inner Adam state, in one thread),
    'vmap' (the generic `vmap(grad_and_value)` oracle in the core's
    inner loop). The reference's summed loss throughout.
    """
    torch.manual_seed(0)
    model = FunctionalModel(OmniglotNet(s.ways).to(device), cross_entropy_sum)
    # the exact mode runs in one thread, as `reptorch train --parallel loop` does (splitting a
    # task's 10 images over two threads measured slower than one thread)
    workers = 1 if mode == "exact" else None
    oracle = model.batched_loss_and_grad(fast=mode != "vmap", workers=workers)
    parallel = "loop" if mode == "exact" else "vmap"
    algorithm = Reptile(model, Adam(s.lr), parallel=parallel, batched_loss_and_grad=oracle)
    learner = MetaLearner(algorithm, Interpolation(1.0, 0.0, 100_000), model.init_params())
    xs, ys = synthetic_batches(s, 4, device)
    return lambda i: learner.step(xs[i % 4], ys[i % 4])


def baseline_step(s: Setting, device: torch.device) -> Callable[[int], None]:
    torch.manual_seed(0)
    learner = SerialReptile(OmniglotNet(s.ways).to(device), s.lr)
    xs, ys = synthetic_batches(s, 4, device)
    return lambda i: learner.step(xs[i % 4], ys[i % 4])


def interleaved_rates(
    runs: dict[str, Callable[[int], None]], rounds: int, per_round: int, device: torch.device
) -> dict[str, list[float]]:
    """Iterations/s of each round, the implementations alternating round by round."""
    for run in runs.values():  # warm-up (allocator, thread pools, lazy init)
        for i in range(2):
            run(i)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            for i in range(per_round):
                run(i)
            _sync(device)
            rates[name].append(per_round / (time.perf_counter() - start))
    return rates


def evaluation_rate(
    mode: str,
    device: torch.device,
    tasks: int,
    chunk: int = 50,
    steps: int = 50,
) -> float:
    """5w1s evaluation tasks/s: 50 Adam steps (lr 1e-3) on the 5 support images, then classify the
    5 queries, all queries in one batch (transductive) or each with the support set (not)."""
    ways = 5
    torch.manual_seed(0)
    model = FunctionalModel(OmniglotNet(ways).to(device))
    phi = model.init_params()
    oracle = model.batched_loss_and_grad()
    forward = model.batched_forward()
    adam = Adam(1e-3)
    gen = torch.Generator().manual_seed(1)
    support = (torch.rand(chunk, ways, 1, 28, 28, generator=gen) > 0.2).float().to(device)
    query = (torch.rand(chunk, ways, 1, 28, 28, generator=gen) > 0.2).float().to(device)
    labels = torch.arange(ways, device=device).expand(chunk, ways)
    xs = support.unsqueeze(1).expand(chunk, steps, *support.shape[1:])
    ys = labels.unsqueeze(1).expand(chunk, steps, ways)

    batches = list(zip(xs.transpose(0, 1), ys.transpose(0, 1), strict=True))

    def run_chunk() -> torch.Tensor:
        params = adapt(oracle, tree.expand(phi, chunk), batches, adam, adam.init(phi)).params
        if mode == "transductive":
            return forward(params, query).argmax(-1) == labels
        # Each query in a batch of the support set plus itself: T*N "tasks" of N+1 images.
        batch = torch.cat(
            [support.unsqueeze(1).expand(-1, ways, -1, -1, -1, -1), query.unsqueeze(2)], dim=2
        ).flatten(0, 1)
        repeated = {k: v.repeat_interleave(ways, dim=0) for k, v in params.items()}
        out = forward(repeated, batch)[:, -1].view(chunk, ways, ways)
        return out.argmax(-1) == labels

    run_chunk()
    _sync(device)
    start = time.perf_counter()
    done = 0
    while done < tasks:
        run_chunk()
        done += chunk
    _sync(device)
    return done / (time.perf_counter() - start)


def environment(device: torch.device) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    except OSError:
        pass
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller samples")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--settings", default="all", help="comma list of 5w1s,5w5s,20w1s")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--vmap", action="store_true", help="also time the library's vmap oracle")
    parser.add_argument("--memory-iters", type=int, default=0, help="only: RSS over N iters")
    parser.add_argument("--markdown", default=None, help="append the result table to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.memory_iters:
        memory_run(args.memory_iters, device)
        return
    rounds, per_round = (3, 3) if args.quick else (7, 6)
    eval_tasks = 100 if args.quick else 1000
    env = environment(device)
    gemm = sgemm_gflops(device=str(device))
    rows = []
    wanted = (
        SETTINGS
        if args.settings == "all"
        else [s for s in SETTINGS if s.name.split()[-1] in args.settings.split(",")]
    )
    for s in wanted:
        runs = {
            "reptorch": reptorch_step(s, device),
            "baseline": baseline_step(s, device),
            "exact": reptorch_step(s, device, "exact"),
        }
        if args.vmap:
            runs["vmap oracle"] = reptorch_step(s, device, "vmap")
        rates = interleaved_rates(runs, rounds, per_round, device)
        flops = omniglot_train_flops(s.ways, s.meta_batch, s.inner_iters, s.inner_batch)
        rows.append((s, rates, flops))
    evals = {}
    if not args.no_eval:
        for mode in ("transductive", "non-transductive"):
            # chunks of 500 tasks, as `reptorch eval` runs the Omniglot 5w1s evaluation
            evals[mode] = evaluation_rate(mode, device, eval_tasks, chunk=min(500, eval_tasks))
    args_text = sys.argv[1:] if argv is None else argv
    report = format_report(env, gemm, rows, evals, " ".join(["python -m bench.run", *args_text]))
    print(report)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + report + "\n")


def format_report(env, gemm, rows, evals, command) -> str:
    lines = [f"- command: `{command}`"] + [f"- {k}: {v}" for k, v in env.items()]
    lines.append(f"- SGEMM (2048^3 fp32, all threads): {gemm:.0f} GFLOP/s")
    lines += [
        "",
        "Median of the interleaved rounds; the baseline's best round in brackets, and the ratio"
        " to it (the conservative figure: the baseline slows down over a run on this machine).",
        "",
        "reptorch: the tasks of a meta-batch side by side from one merged inner state; exact:"
        " the reference's semantics (tasks in sequence threading one inner Adam state, one chain of"
        " dependent steps in one thread), `parallel='loop'`.",
        "",
        "| setting | reptorch it/s | baseline it/s | reptorch / baseline | reptorch GFLOP/s |"
        " % of SGEMM | exact it/s (exact / reptorch) | others it/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, rates, flops in rows:
        rep = statistics.median(rates["reptorch"])
        base, best = statistics.median(rates["baseline"]), max(rates["baseline"])
        others = ", ".join(
            f"{k}: {statistics.median(v):.1f}"
            for k, v in rates.items()
            if k not in ("reptorch", "baseline", "exact")
        )
        exact = statistics.median(rates["exact"])
        lines.append(
            f"| {s.name} | {rep:.1f} | {base:.1f} (best {best:.1f}) |"
            f" {rep / base:.2f}x ({rep / best:.2f}x) | {rep * flops / 1e9:.0f} |"
            f" {100 * rep * flops / 1e9 / gemm:.0f}% | {exact:.1f} ({exact / rep:.2f}x) |"
            f" {others or '-'} |"
        )
    if evals:
        lines += ["", "| evaluation (5w1s, 50 steps) | tasks/s | 10,000 tasks |", "|---|---|---|"]
        for mode, rate in evals.items():
            lines.append(f"| {mode} | {rate:.1f} | {10_000 / rate / 60:.1f} min |")
    lines += ["", f"- RSS now {rss_mib():.0f} MiB, peak {peak_rss_mib():.0f} MiB"]
    return "\n".join(lines)


def memory_run(iters: int, device: torch.device) -> None:
    """RSS at the start (after 20 warm-up iterations) and at every tenth of a long 5w1s run."""
    step = reptorch_step(SETTINGS[0], device)
    for i in range(20):
        step(i)
    start = time.perf_counter()
    print(f"iter 0: RSS {rss_mib():.1f} MiB", flush=True)
    for i in range(1, iters + 1):
        step(i)
        if i % max(1, iters // 10) == 0:
            rate = i / (time.perf_counter() - start)
            print(f"iter {i}: RSS {rss_mib():.1f} MiB, {rate:.1f} it/s", flush=True)
    print(f"peak RSS {peak_rss_mib():.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
