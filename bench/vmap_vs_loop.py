"""One Omniglot-sized Reptile meta-iteration, task-parallel (vmap) vs a Python loop over tasks.

5 tasks x 5 Adam steps x 10 images of 28x28, the paper's 4-layer 64-filter network, through the
library's public `MetaLearner.step`. The two modes alternate, so machine noise hits both alike.
Run: python -m bench.vmap_vs_loop [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reptorch.algorithms import Reptile
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.meta import MetaLearner
from reptorch.models import OmniglotNet
from reptorch.outer import Interpolation


def make_learner(parallel: str, oracle=None) -> MetaLearner:
    torch.manual_seed(0)
    model = FunctionalModel(OmniglotNet(5))
    algorithm = Reptile(model, Adam(1e-3), parallel=parallel, batched_loss_and_grad=oracle)
    return MetaLearner(algorithm, Interpolation(1.0, 0.0, 10_000), model.init_params())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(5, 5, 10, 1, 28, 28, generator=g).round()
    ys = torch.randint(0, 5, (5, 5, 10), generator=g)
    learners = {"vmap (torch.func)": make_learner("vmap"), "loop": make_learner("loop")}
    try:
        from reptorch.fast import fast_loss_and_grad_for

        oracle = fast_loss_and_grad_for(OmniglotNet(5))
        if oracle is not None:
            learners["vmap (reptorch.fast oracle)"] = make_learner("vmap", oracle)
    except ImportError:
        pass
    times: dict[str, list[float]] = {name: [] for name in learners}
    for learner in learners.values():  # warm-up
        learner.step(xs, ys)
    for _ in range(args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.step(xs, ys)
            times[name].append(time.perf_counter() - start)
    loop = statistics.median(times["loop"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:30s} {median * 1e3:8.1f} ms/it  {1 / median:6.2f} it/s  x{loop / median:.2f}")


if __name__ == "__main__":
    main()
