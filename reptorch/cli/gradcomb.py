"""`reptorch gradcomb`: the paper's Figure 4, ten gradient combinations on 5-shot 5-way Omniglot.

Each curve is a `reptorch train` run in RUN_DIR/<curve>/ (rerunning the command resumes them all);
the curves advance in turns of --chunk iterations so that a stopped run has all ten at the same
iteration. Writes RUN_DIR/curves.csv, RUN_DIR/curves.json and the figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from reptorch.chain_threads import cpu_threads
from reptorch.errors import ConfigError
from reptorch.experiments.gradcomb import (
    CURVES,
    GradCombConfig,
    collect,
    completed,
    findings,
    run_all,
    smooth,
    summary,
    truncate,
    write_curves,
)
from reptorch.plots import plot_gradcomb


def register(subparsers: argparse._SubParsersAction) -> None:
    d = GradCombConfig()
    parser = subparsers.add_parser(
        "gradcomb",
        help="paper Figure 4: which sums of inner gradients make a good meta-gradient",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run-dir", type=Path, default=Path("gradcomb"), help="ten run dirs")
    parser.add_argument("--data-dir", help="data root ($REPTORCH_DATA, ~/.cache/reptorch)")
    parser.add_argument("--meta-iters", type=int, default=d.meta_iters, help="per curve")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate, help="inner SGD")
    parser.add_argument("--inner-batch", type=int, default=d.inner_batch)
    parser.add_argument("--eval-batch", type=int, default=d.eval_batch)
    parser.add_argument("--eval-iters", type=int, default=d.eval_iters)
    parser.add_argument("--eval-interval", type=int, default=d.eval_interval)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--chunk", type=int, default=d.chunk, help="iterations per turn")
    parser.add_argument(
        "--stop-at",
        type=int,
        metavar="N",
        help="stop once every curve reaches iteration N; rerunning resumes (default: the end)",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device)
    parser.add_argument(
        "--curves",
        default=",".join(c.slug for c in CURVES),
        help="subset, by run directory name: " + ", ".join(f"{c.slug}={c.label}" for c in CURVES),
    )
    parser.add_argument(
        "--smooth", type=int, default=100, help="moving-average window, in evaluations"
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw from RUN_DIR, no training")
    parser.add_argument("--out", type=Path, help="figure (default: RUN_DIR/gradcomb.png)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the final accuracies as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f"--stop-at {args.stop_at}: give an iteration of at least 1")
    config = GradCombConfig(
        meta_iters=args.meta_iters,
        learning_rate=args.learning_rate,
        inner_batch=args.inner_batch,
        eval_batch=args.eval_batch,
        eval_iters=args.eval_iters,
        eval_interval=args.eval_interval,
        seed=args.seed,
        data_dir=args.data_dir,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        chunk=args.chunk,
        curves=tuple(s.strip() for s in args.curves.split(",") if s.strip()),
    )
    directory = args.run_dir
    workers = cpu_threads()
    if not args.plot_only:
        selected = config.selected()
        end = min(args.stop_at or config.meta_iters, config.meta_iters)
        start = sum(min(completed(directory / c.slug), end) for c in selected)
        total = len(selected) * end
        with tqdm(
            total=total,
            initial=start,
            unit="it",
            desc=f"{len(selected)} curves",
            disable=args.no_progress,
            file=sys.stderr,
        ) as bar:
            run_all(config, directory, workers, on_iteration=bar.update, stop_at=args.stop_at)
    window = max(1, min(args.smooth, config.meta_iters // config.eval_interval // 5))
    curves = collect(config, directory, window)
    meta = {**config.__dict__, "smooth_window": window}
    meta["curves"] = list(config.curves)
    done = {label: completed(directory / c["slug"]) for label, c in curves.items()}
    iterations = min(done.values(), default=0)
    common = truncate(curves, iterations)  # every curve up to the same iteration
    for c in common.values():
        c["test_smoothed"] = smooth(c["test"], window)
    checks = findings(common, window)
    meta["findings"] = checks
    out = args.out or directory / "gradcomb.png"
    title = (
        f"5-shot 5-way Omniglot: inner SGD lr {config.learning_rate} on the summed loss, "
        f"batch {config.inner_batch}\n{iterations} iterations per curve; moving average of "
        f"{window} evaluations (one test task each)"
    )
    plot_gradcomb(common, out, title)
    last = max(1, window)
    final = summary(common, last)
    print(
        f"test accuracy at iteration {iterations}, mean of the last {last} interval evaluations "
        f"(one task each):"
    )
    for label, value in final.items():
        print(f"  {label:18s} {100 * value:6.2f}%")
    print("the paper's findings: paired differences of test accuracy (points +- one SE)")
    for f in checks:
        value = f"{100 * f['mean']:+.1f} +- {100 * f['se']:.1f}"
        print(f"  {f['claim']}: {f['difference']} = {value} ({f['window']})")
    write_curves(curves, directory, meta)
    print(f"figure: {out}\ncurves: {directory / 'curves.csv'}, {directory / 'curves.json'}")
    if args.json:
        print(json.dumps(final))
    return 0
