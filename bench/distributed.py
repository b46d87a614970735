"""Distributed benchmark (issue 11): threads in one process vs processes over torch.distributed.

    python -m bench.distributed                     # 7 interleaved rounds of 6 iterations
    python -m bench.distributed --rounds 3 --per-round 4 --markdown docs/benchmarks.md

Omniglot 5w1s meta-training with the paper's settings (meta-batch 5, 5 inner Adam steps of 10
images, lr 1e-3, the reference's summed loss) on synthetic tensors of the right shapes, through
the library's `MetaLearner` + `Reptile` and the `reptorch.fast` oracle:
- threads: one process, the oracle's two single-threaded worker threads (tasks split 3/2);
- processes: two single-threaded processes joined by gloo on 127.0.0.1 (`reptorch.distributed`,
  as under `torchrun --nproc-per-node 2`), each running its share of the tasks (3/2) and one
  all-reduce per tree (task update, Adam's two moments) and one for the losses per iteration.
The two alternate round by round in one run (the workers wait on a pipe while the threads run),
and the median round is reported. Both apply the same meta-batches, so they end on the same
parameters bit for bit; the report says whether they did.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

from bench.run import environment
from bench.steps import SETTINGS, synthetic_batches
from reptorch import distributed
from reptorch.algorithms import Reptile
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.losses import cross_entropy_sum
from reptorch.meta import MetaLearner
from reptorch.models import OmniglotNet
from reptorch.outer import Interpolation

SETTING = SETTINGS[0]  # Omniglot 5w1s


def make_learner(workers: int, group: distributed.Group) -> MetaLearner:
    torch.manual_seed(0)
    model = FunctionalModel(OmniglotNet(SETTING.ways), cross_entropy_sum)
    oracle = model.batched_loss_and_grad(workers=workers)
    algorithm = Reptile(model, Adam(SETTING.lr), parallel="vmap", batched_loss_and_grad=oracle)
    return MetaLearner(algorithm, Interpolation(1.0, 0.0, 100_000), model.init_params(), group)


def fingerprint(learner: MetaLearner) -> str:
    digest = hashlib.sha256()
    for name in sorted(learner.phi):
        digest.update(learner.phi[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Stepper:
    """Runs meta-iterations i, i+1, ... on four synthetic meta-batches, in turn."""

    def __init__(self, learner: MetaLearner) -> None:
        self.learner, self.done = learner, 0
        self.xs, self.ys = synthetic_batches(SETTING, 4, torch.device("cpu"))

    def run(self, count: int) -> None:
        for _ in range(count):
            i = self.done % 4
            self.learner.step(self.xs[i], self.ys[i])
            self.done += 1


def worker() -> None:
    """One of the processes: reads 'run N' / 'end' lines, answers seconds (rank 0) or 'ok'."""
    torch.set_num_threads(1)
    group = distributed.setup("cpu", 120)
    stepper = Stepper(make_learner(1, group))
    for line in sys.stdin:
        command = line.split()
        if command[0] == "end":
            print(fingerprint(stepper.learner), flush=True)
            break
        torch.distributed.barrier()
        start = time.perf_counter()
        stepper.run(int(command[1]))  # the last all-reduce waits for the other process
        print(f"{time.perf_counter() - start:.6f}", flush=True)
    distributed.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(size: int) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    for rank in range(size):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(size),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.distributed", "--worker"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def ask(procs: list[subprocess.Popen], line: str) -> list[str]:
    for p in procs:
        p.stdin.write(line + "\n")
        p.stdin.flush()
    return [p.stdout.readline().strip() for p in procs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=6)
    parser.add_argument("--markdown", help="append the report to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return
    procs = start_workers(2)
    torch.set_num_threads(1)  # the oracle's two workers are the threads
    threads = Stepper(make_learner(2, distributed.LOCAL))
    rates: dict[str, list[float]] = {"threads": [], "processes": []}
    threads.run(2)  # warm-up: allocator, thread pools, TorchScript
    ask(procs, "run 2")
    for _ in range(args.rounds):
        start = time.perf_counter()
        threads.run(args.per_round)
        rates["threads"].append(args.per_round / (time.perf_counter() - start))
        seconds = float(ask(procs, f"run {args.per_round}")[0])
        rates["processes"].append(args.per_round / seconds)
    same = ask(procs, "end")[0] == fingerprint(threads.learner)
    for p in procs:
        p.wait(timeout=60)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    command = " ".join(["python -m bench.distributed", *(sys.argv[1:] if argv is None else argv)])
    env = environment(torch.device("cpu"))
    lines = [f"- command: `{command}`", f"- date: {env['date']}", f"- cpu: {env['cpu']}"]
    lines += [f"- torch: {env['torch']}", f"- load average at the end: {load}", ""]
    lines += ["| Omniglot 5w1s meta-training | it/s (median) | rounds |", "|---|---|---|"]
    for name, label in (
        ("threads", "1 process, 2 worker threads"),
        ("processes", "2 single-threaded processes (gloo)"),
    ):
        shown = ", ".join(f"{r:.1f}" for r in rates[name])
        lines.append(f"| {label} | {statistics.median(rates[name]):.2f} | {shown} |")
    ratio = statistics.median(rates["processes"]) / statistics.median(rates["threads"])
    lines += ["", f"processes / threads: {ratio:.2f}x; same final parameters: {same}"]
    report = "\n".join(lines)
    print(report)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
