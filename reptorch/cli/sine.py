"""`reptorch sine`: the paper's sine-wave experiment (Figure 1) and the built-in default job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from reptorch.experiments.sine import METHODS, PLOTTED_TASK, SineConfig, evaluate, meta_train
from reptorch.plots import plot_sine_figure


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = SineConfig()
    parser = subparsers.add_parser(
        "sine",
        help="sine-wave regression: Reptile vs MAML vs FOMAML vs joint training (paper Fig. 1)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--methods",
        default=",".join(defaults.methods),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    parser.add_argument("--meta-iters", type=int, default=defaults.meta_iters)
    parser.add_argument("--meta-batch", type=int, default=defaults.meta_batch)
    parser.add_argument("--meta-step", type=float, default=defaults.meta_step)
    parser.add_argument("--meta-step-final", type=float, default=defaults.meta_step_final)
    parser.add_argument("--inner-iters", type=int, default=defaults.inner_iters)
    parser.add_argument("--inner-batch", type=int, default=defaults.inner_batch)
    parser.add_argument("--learning-rate", type=float, default=defaults.inner_lr, help="inner SGD")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks)
    parser.add_argument("--eval-steps", type=int, default=defaults.eval_steps)
    parser.add_argument("--activation", choices=("tanh", "relu"), default=defaults.activation)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=Path("sine.png"), help="figure (PNG)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = SineConfig(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        meta_iters=args.meta_iters,
        meta_batch=args.meta_batch,
        meta_step=args.meta_step,
        meta_step_final=args.meta_step_final,
        inner_iters=args.inner_iters,
        inner_batch=args.inner_batch,
        inner_lr=args.learning_rate,
        eval_tasks=args.eval_tasks,
        eval_steps=args.eval_steps,
        eval_every=max(args.eval_steps // 4, 1),
        activation=args.activation,
        seed=args.seed,
    )
    summary, curves = {}, {}
    last = config.eval_steps - config.eval_steps % config.eval_every
    for method in config.methods:
        start = time.perf_counter()
        with tqdm(total=config.meta_iters, desc=f"{method:8s}", unit="it", file=sys.stderr) as bar:
            phi = meta_train(method, config, progress=lambda _: bar.update())
        mse, curves[method] = evaluate(phi, config)
        summary[method] = {
            "mse_before": mse[0][0],
            "ci95_before": mse[0][1],
            "mse_after": mse[last][0],
            "ci95": mse[last][1],
            "steps": last,
            "train_seconds": round(time.perf_counter() - start, 1),
        }
    _print_table(summary, config)
    _plot(config, curves, args.out)
    print(f"figure: {args.out}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _print_table(summary: dict, config: SineConfig) -> None:
    print(
        f"Sine regression: MSE on 50 grid points over {config.eval_tasks} held-out tasks, "
        f"{config.eval_shots} training points, mean +- 95% CI"
    )
    after = f"after {config.eval_steps} steps"
    print(f"{'method':10s}{'before adaptation':>22s}{after:>22s}")
    for method, row in summary.items():
        before = f"{row['mse_before']:.3f} +- {row['ci95_before']:.3f}"
        after = f"{row['mse_after']:.3f} +- {row['ci95']:.3f}"
        print(f"{method:10s}{before:>22s}{after:>22s}")


def _plot(config: SineConfig, curves: dict, path: Path) -> None:
    """The plotted evaluation task, as `evaluate` draws it."""
    generator = torch.Generator().manual_seed(config.seed + 10_000)
    sx, sy, qx, qy = config.tasks.sample_eval(
        config.eval_tasks, config.eval_shots, generator=generator
    )
    i = PLOTTED_TASK
    plot_sine_figure(qx[i, :, 0], qy[i, :, 0], sx[i, :, 0], sy[i, :, 0], curves, path)
