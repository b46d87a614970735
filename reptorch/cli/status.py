"""`reptorch status RUN_DIR`: where a run stands (`reptorch.run.status`), from its directory
alone, while it trains or between sessions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reptorch.run.status import describe_status, run_status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="where a run stands: iteration, meta step, time so far and to go, recent scores, "
        "saved and staged evaluations",
    )
    parser.add_argument("run", metavar="RUN_DIR", help="run directory of `reptorch train`")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory = Path(args.run)
    status = run_status(directory)
    if args.json:
        print(json.dumps(status))
        return 0
    print("\n".join(describe_status(status)))
    return 0
