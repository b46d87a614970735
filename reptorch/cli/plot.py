"""`reptorch plot RUN_DIR --out FILE`: the learning curve of a run, from its metrics log.

Train and monitor (test or val) scores of the per-interval evaluations (one fresh task each,
as the reference prints them), smoothed; the meta step; the inner loss; and the run's saved
evaluations of its own cell (`reptorch eval`, every checkpoint's) as points with their 95%
intervals. Works on a run in progress: it reads what `metrics.csv` holds so far.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reptorch.errors import ConfigError
from reptorch.plots import plot_learning_curve
from reptorch.run.checkpoint import list_checkpoints
from reptorch.run.directory import saved_evaluations
from reptorch.run.metrics_log import read_metrics


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's learning curve (train/test accuracy, meta step, inner loss) as a PNG",
    )
    parser.add_argument("run", metavar="RUN_DIR", help="run directory of `reptorch train`")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument(
        "--smooth", type=int, default=100, help="moving-average window in log rows (default: 100)"
    )
    parser.add_argument("--title", help="figure title (default: the run directory's name)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.smooth < 1:
        raise ConfigError(f"--smooth {args.smooth}: give a window of at least 1 row")
    if not args.out.lower().endswith(".png"):
        raise ConfigError(f"--out {args.out}: the figure is a PNG; name a .png file")
    directory = Path(args.run)
    metrics = read_metrics(directory)
    monitor, metric, cell = "test", "accuracy", None
    config_path = directory / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())["config"]
            metric = "mse" if config.get("dataset") == "sine" else "accuracy"
            cell = (config["classes"], config["shots"])
        except (ValueError, KeyError, TypeError):
            pass  # the curve needs only the metrics log
    if (directory / "val").is_dir():
        monitor = "val"
    last = int(metrics["iteration"][-1])
    # Rows are logged every eval_interval iterations; the newest checkpoint says how far it ran.
    done = max(list_checkpoints(directory) or [last + 1])
    title = args.title or f"{directory.name}: {done:,} meta-iterations"
    points = [
        row
        for row in saved_evaluations(directory)[0]
        if (row["ways"], row["shots"]) == cell and row["metric"] == metric
    ]
    plot_learning_curve(
        metrics,
        Path(args.out),
        title=title,
        monitor=monitor,
        metric=metric,
        window=args.smooth,
        evaluations=points,
    )
    rows = len(metrics["iteration"])
    drawn = f"; {len(points)} saved evaluations" if points else ""
    print(
        f"wrote {args.out} ({rows} rows, iterations 0..{last}; {done:,} meta-iterations run{drawn})"
    )
    return 0
