"""`reptorch status RUN_DIR`: where a run stands (`reptorch.run.status`), from its directory
alone, while it trains or between sessions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reptorch.errors import ConfigError
from reptorch.run.status import describe_group, describe_status, run_status, runs_in


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="where a run stands: iteration, meta step, time so far and to go, recent scores, "
        "saved and staged evaluations",
    )
    parser.add_argument(
        "run",
        metavar="RUN_DIR",
        help="run directory of `reptorch train`, or a directory of runs (each one's status: "
        "`reptorch gradcomb`'s curves, a folder of runs)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        metavar="N",
        help="also the interval scores averaged over windows of N iterations, with their 95%% "
        "intervals: the learning curve as a table",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead (a list of them for a directory of runs)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.windows is not None and args.windows < 1:
        raise ConfigError(f"--windows {args.windows}: give a window of at least one iteration")
    found = runs_in(Path(args.run))
    statuses = [run_status(directory, args.windows) for directory in found]
    group = found != [Path(args.run)]  # a directory of runs, not a run
    if args.json:
        print(json.dumps(statuses if group else statuses[0]))
        return 0
    blocks = ["\n".join(describe_status(status)) for status in statuses]
    if group:
        blocks.append(describe_group(statuses))
    print("\n\n".join(blocks))
    return 0
