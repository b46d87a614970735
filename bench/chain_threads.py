"""Three ways to spend the cores on the exact sequential chain (`--parallel loop`): one
meta-iteration is one chain of meta_batch x inner_iters dependent inner Adam steps, each on one
task's `inner_batch` images, so the cores can only share the work inside a step.

    python -m bench.chain_threads --settings 5w1s,20w1s --rounds 3 --per-round 12 [--load 1]

- chain: one single-threaded chain (what `reptorch train --parallel loop` runs);
- images: each step's images split over the fast oracle's worker threads (BatchNorm sums
  all-reduced at a dozen thread meetings per step);
- intra-op: one chain with torch's OpenMP intra-op threads.

The same `MetaLearner` + `Reptile` + inner `Adam` step on synthetic batches, the three modes
alternating round by round (median round reported). Interval evaluations are not included.
`--load N` keeps N busy-looping processes running meanwhile: another job holding a core.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from bench.run import environment
from bench.steps import SETTINGS, Setting, key, synthetic_batches
from reptorch.algorithms.reptile import Reptile
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.losses import cross_entropy_sum
from reptorch.meta import MetaLearner
from reptorch.outer import Interpolation

# mode -> (fast-oracle worker threads, torch intra-op threads); None: all the cores
MODES: dict[str, tuple[int | None, int | None]] = {
    "chain": (1, 1),
    "images": (None, 1),
    "intra-op": (1, None),
}


def exact_step(s: Setting, workers: int) -> tuple[MetaLearner, Callable[[int], None]]:
    """A learner, and one exact (`parallel='loop'`) meta-iteration of it per call, on 4 cycling
    synthetic batches."""
    torch.manual_seed(0)
    model = FunctionalModel(s.network(), cross_entropy_sum)
    oracle = model.batched_loss_and_grad(workers=workers)
    algorithm = Reptile(model, Adam(s.lr), parallel="loop", batched_loss_and_grad=oracle)
    learner = MetaLearner(algorithm, Interpolation(1.0, 0.0, 100_000), model.init_params())
    xs, ys = synthetic_batches(s, 4, torch.device("cpu"))
    return learner, lambda i: learner.step(xs[i % 4], ys[i % 4])


def rates(
    s: Setting, rounds: int, per_round: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Iterations/s of each round per mode, and each mode's largest |phi - phi of 'chain'|
    after the same iterations from the same start (0.0: the same trajectory bit for bit)."""
    cores = torch.get_num_threads()
    made = {m: exact_step(s, w or cores) for m, (w, _) in MODES.items()}
    steps = {m: step for m, (_, step) in made.items()}
    out: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds + 1):  # round 0 warms up (TorchScript, allocator, thread pools)
        for mode, (_, threads) in MODES.items():
            torch.set_num_threads(threads or cores)
            start = time.perf_counter()
            for i in range(per_round if r else 2):
                steps[mode](i)
            if r:
                out[mode].append(per_round / (time.perf_counter() - start))
    torch.set_num_threads(cores)
    chain = made["chain"][0].phi
    drift = {
        m: max((learner.phi[k] - chain[k]).abs().max().item() for k in chain)
        for m, (learner, _) in made.items()
    }
    return out, drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="5w1s,20w1s", help="comma list of 5w1s,20w1s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=12)
    parser.add_argument("--load", type=int, default=0, help="busy processes running meanwhile")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        report(args)
    finally:
        for process in busy:
            process.kill()


def report(args: argparse.Namespace) -> None:
    env = environment(torch.device("cpu"))
    print(", ".join(f"{k}: {v}" for k, v in env.items()) + f", busy processes: {args.load}")
    print("| setting | " + " | ".join(f"{m} it/s" for m in MODES) + " |")
    print("|---" * (len(MODES) + 1) + "|")
    drifts = []
    for s in SETTINGS:
        if key(s) not in args.settings.split(","):
            continue
        r, drift = rates(s, args.rounds, args.per_round)
        drifts.append(f"{s.name}: " + ", ".join(f"{m} {d:.1e}" for m, d in drift.items()))
        chain = statistics.median(r["chain"])
        cells = [f"{chain:.2f}"]
        for mode in list(MODES)[1:]:
            m = statistics.median(r[mode])
            cells.append(f"{m:.2f} ({m / chain:.2f}x)")
        print(f"| {s.name} | " + " | ".join(cells) + " |", flush=True)
    iters = 2 + args.rounds * args.per_round
    print(f"\nmax |phi - phi of chain| after {iters} iterations: " + "; ".join(drifts))


if __name__ == "__main__":
    main()
