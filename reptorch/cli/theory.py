"""`reptorch theory`: the paper's Taylor table (section 5) measured on the library's algorithms."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from reptorch.errors import ConfigError
from reptorch.experiments.theory import (
    TheoryConfig,
    analyse,
    loglog_slope,
    measure,
    omniglot_problem,
    sine_problem,
)
from reptorch.plots import plot_theory_residuals
from reptorch.run.io import atomic_write_json

# --dataset omniglot: a smaller sample and smaller steps (the summed loss on 25 images has a
# much larger Hessian than the sine MLP's mean squared error)
OMNIGLOT_DEFAULTS = {"tasks": 8, "group": 2, "alphas": "1e-7,1e-6,1e-5", "inner_batch": 25}


def register(subparsers: argparse._SubParsersAction) -> None:
    d = TheoryConfig()
    parser = subparsers.add_parser(
        "theory",
        help="measure the paper's Taylor table: E[g] = a AvgGrad + b alpha AvgGradInner",
        description="Monte Carlo estimates of AvgGrad, AvgGradInner and the expected Reptile, "
        "FOMAML and MAML gradients (plain SGD, disjoint mini-batches) at a fixed phi, fitted as "
        "a AvgGrad + b alpha AvgGradInner beside the paper's (a, b). Omniglot defaults: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in OMNIGLOT_DEFAULTS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", choices=("sine", "omniglot"), default="sine")
    parser.add_argument("--data-dir", help="data root for omniglot ($REPTORCH_DATA, ~/.cache)")
    parser.add_argument("--ks", default=",".join(map(str, d.ks)), help="inner step counts k")
    parser.add_argument(
        "--alphas", default=None, help=f"inner SGD steps (sine: {','.join(map(str, d.alphas))})"
    )
    parser.add_argument("--algorithms", default=",".join(d.algorithms), help="subset to measure")
    parser.add_argument("--tasks", type=int, default=None, help=f"tasks (sine: {d.tasks})")
    parser.add_argument(
        "--group", type=int, default=None, help=f"tasks per group (sine: {d.group})"
    )
    parser.add_argument("--inner-batch", type=int, default=None, help="mini-batch size (sine: 10)")
    parser.add_argument("--bootstrap", type=int, default=d.bootstrap, help="resamples for SEs")
    parser.add_argument(
        "--no-rotate",
        action="store_true",
        help="plain Monte Carlo: do not run each task's batches in all their cyclic orders",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, default=Path("theory.png"), help="residual plot")
    parser.add_argument("--json-out", type=Path, help="write every fitted row to this JSON file")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON last")
    parser.set_defaults(func=run)


def _numbers(text: str, kind: type, flag: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated numbers") from None
    return values


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # small tensors: intra-op threads only wait on shared cores
    omniglot = args.dataset == "omniglot"
    defaults = OMNIGLOT_DEFAULTS if omniglot else {}
    d = TheoryConfig()
    alphas = args.alphas or defaults.get("alphas") or ",".join(map(str, d.alphas))
    config = TheoryConfig(
        ks=_numbers(args.ks, int, "--ks"),
        alphas=_numbers(alphas, float, "--alphas"),
        algorithms=tuple(a.strip() for a in args.algorithms.split(",") if a.strip()),
        tasks=args.tasks or defaults.get("tasks", d.tasks),
        group=args.group or defaults.get("group", d.group),
        bootstrap=args.bootstrap,
        rotate=not args.no_rotate,
        seed=args.seed,
    )
    batch = args.inner_batch or defaults.get("inner_batch", 10)
    if omniglot:
        problem = omniglot_problem(args.data_dir, inner_batch=batch, max_k=max(config.ks))
    else:
        problem = sine_problem(inner_batch=batch, seed=config.seed)
    with tqdm(total=config.groups, desc="groups", unit="group", file=sys.stderr) as bar:
        measurements = measure(problem, config, progress=lambda _: bar.update())
    rows = analyse(measurements, config)
    _print_table(rows, config, problem.name)
    title = (
        f"{problem.name}: {config.tasks} tasks, inner batch {batch}, "
        f"{'rotated' if config.rotate else 'plain'} Monte Carlo"
    )
    plot_theory_residuals(rows, args.out, title)
    print(f"figure: {args.out}")
    if args.json_out:
        atomic_write_json(args.json_out, {"config": _describe(config, problem.name), "rows": rows})
    if args.json:
        print(json.dumps(rows))
    return 0


def _describe(config: TheoryConfig, dataset: str) -> dict:
    return {"dataset": dataset, **{k: getattr(config, k) for k in config.__dataclass_fields__}}


def _print_table(rows: list[dict], config: TheoryConfig, dataset: str) -> None:
    alpha = min(config.alphas)
    print(
        f"Taylor table on {dataset} ({config.tasks} tasks in {config.groups} groups, "
        f"bootstrap SEs over groups): fit at alpha = {alpha:g}; residual slope = log-log slope "
        f"of the paper's relative residual over the {len(config.alphas)} alphas"
    )
    head = f"{'algorithm':10s}{'k':>3s}{'paper a':>9s}{'fitted a':>20s}{'paper b':>9s}"
    print(head + f"{'fitted b':>22s}{'slope':>7s}")
    for name in config.algorithms:
        for k in config.ks:
            series = [r for r in rows if r["algorithm"] == name and r["k"] == k]
            row = min(series, key=lambda r: r["alpha"])
            fitted_a = f"{row['a']:.4f} +- {row['a_se']:.4f}"
            fitted_b = f"{row['b']:.3f} +- {row['b_se']:.3f}"
            slope = loglog_slope(series, "residual_paper") if len(series) > 1 else float("nan")
            print(
                f"{name:10s}{k:3d}{row['a_paper']:9.1f}{fitted_a:>20s}{row['b_paper']:9.1f}"
                f"{fitted_b:>22s}{slope:7.2f}"
            )
