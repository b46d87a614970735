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
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from bench.gemm import sgemm_gflops
from bench.steps import SETTINGS, Setting, baseline_step, key, reptorch_step
from reptorch import tree
from reptorch.adapt import adapt
from reptorch.chain_threads import resolve_chain_workers
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.models import OmniglotNet
from reptorch.run.setup import resolve_kernels


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    parser.add_argument(
        "--settings", default="all", help="comma list of 5w1s,5w5s,20w1s,mini (default: all)"
    )
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--vmap", action="store_true", help="also time the library's vmap oracle")
    parser.add_argument(
        "--busy", type=int, default=1, help="busy processes beside the second table (0: skip it)"
    )
    parser.add_argument(
        "--busy-only", action="store_true", help="only the table beside busy processes"
    )
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
    wanted = [s for s in SETTINGS if args.settings == "all" or key(s) in args.settings.split(",")]
    rows = []
    for s in [] if args.busy_only else wanted:
        runs = {
            "exact": reptorch_step(s, device, "exact"),
            "baseline": baseline_step(s, device),
            "exact, 1 worker": reptorch_step(s, device, "exact", chain_workers=1),
            "merged": reptorch_step(s, device),
            "intra-op 2 threads": reptorch_step(s, device, "exact", 1, threads=2),
        }
        if resolve_kernels("", s.network(), str(device)) == "fused":
            runs["exact, aten"] = reptorch_step(s, device, "exact", kernels="aten")
        if resolve_chain_workers(0, s.network(), True, images=s.inner_batch) > 1:
            runs["exact, fixed"] = reptorch_step(s, device, "exact", slice_threads=2)
        if args.vmap:
            runs["vmap oracle"] = reptorch_step(s, device, "vmap")
        # Mini-ImageNet's meta-iterations take seconds: fewer of them per round
        big = s.dataset == "miniimagenet"
        rates = interleaved_rates(runs, rounds, 1 if big else per_round, device)
        rows.append((s, rates))
        del runs
    busy_rows = []
    if args.busy and device.type == "cpu":
        busy_rows = beside_busy(wanted, args.busy, rounds, per_round)
    evals = {}
    if not (args.no_eval or args.busy_only):
        for mode in ("transductive", "non-transductive"):
            # chunks of 500 tasks, as `reptorch eval` runs the Omniglot 5w1s evaluation
            evals[mode] = evaluation_rate(mode, device, eval_tasks, chunk=min(500, eval_tasks))
    args_text = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.run", *args_text])
    report = format_report(env, gemm, rows, busy_rows, args.busy, evals, command)
    print(report)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + report + "\n")


def beside_busy(
    wanted: list[Setting], busy: int, rounds: int, per_round: int
) -> list[tuple[Setting, dict[str, list[float]]]]:
    """The exact chain's ways of using the cores while `busy` processes each hold a core
    busy-looping (the niced training run a benchmark or a user's other job lives beside)."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        out = []
        for s in wanted:
            if s.name.endswith("5w5s"):  # trains exactly as 5w1s
                continue
            runs = {
                "default": reptorch_step(s, torch.device("cpu"), "exact"),
                "1 worker": reptorch_step(s, torch.device("cpu"), "exact", chain_workers=1),
                "2 workers": reptorch_step(s, torch.device("cpu"), "exact", chain_workers=2),
                "2 workers, fixed": reptorch_step(s, _CPU, "exact", 2, slice_threads=2),
                "intra-op 2 threads": reptorch_step(s, _CPU, "exact", 1, threads=2),
            }
            big = s.dataset == "miniimagenet"
            out.append((s, interleaved_rates(runs, rounds, 1 if big else per_round, _CPU)))
            del runs
        return out
    finally:
        for process in processes:
            process.kill()


_CPU = torch.device("cpu")


def format_report(env, gemm, rows, busy_rows, busy, evals, command) -> str:
    lines = [f"- command: `{command}`"] + [f"- {k}: {v}" for k, v in env.items()]
    lines.append(f"- SGEMM (2048^3 fp32, all threads): {gemm:.0f} GFLOP/s")
    lines += [
        "",
        "Median of the interleaved rounds. exact: the default `reptorch train` step, the"
        " reference's semantics (`parallel='loop'`: the tasks in sequence threading one inner"
        " Adam state), its steps split over the workers `--chain-workers 0` chooses, the blocks'"
        " BatchNorm / ReLU / pool passes `--kernels` picks by default (fused; 'exact, aten':"
        " PyTorch's ops); baseline:"
        " a plain `nn.Module` + `torch.optim.Adam` loop on PyTorch's own convolutions, all"
        " threads (`bench/baseline.py`); merged: the tasks side by side from one merged inner"
        " state (`--parallel vmap`).",
        "",
        "| setting | exact it/s (s/it) | workers | baseline it/s | exact / baseline |"
        " exact GFLOP/s | % of SGEMM | exact, 1 worker it/s | merged it/s | others |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, rates in rows:
        med = {k: statistics.median(v) for k, v in rates.items()}
        exact, base = med["exact"], med["baseline"]
        workers = resolve_chain_workers(0, s.network(), True, images=s.inner_batch)
        gflops = exact * s.flops / 1e9
        others = ", ".join(
            f"{k}: {v:.2f}"
            for k, v in med.items()
            if k not in ("exact", "baseline", "exact, 1 worker", "merged")
        )
        lines.append(
            f"| {s.name} | {exact:.2f} ({1 / exact:.3f}) | {workers} | {base:.2f} |"
            f" {exact / base:.2f}x | {gflops:.0f} | {100 * gflops / gemm:.0f}% |"
            f" {med['exact, 1 worker']:.2f} | {med['merged']:.2f} | {others or '-'} |"
        )
    if busy_rows:
        lines += [
            "",
            f"With {busy} busy-looping process(es) beside it (the exact step; ratio to 1 worker):",
            "",
            "| setting | default it/s | 1 worker it/s | 2 workers it/s | 2 workers, fixed it/s |"
            " intra-op 2 threads it/s |",
            "|---|---|---|---|---|---|",
        ]
        for s, rates in busy_rows:
            med = {k: statistics.median(v) for k, v in rates.items()}
            one = med["1 worker"]
            cells = [f"{med[k]:.2f} ({med[k] / one:.2f}x)" for k in med if k != "1 worker"]
            lines.append(f"| {s.name} | {cells[0]} | {one:.2f} | {' | '.join(cells[1:])} |")
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
