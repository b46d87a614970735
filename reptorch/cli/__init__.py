"""The `reptorch` command line: a thin layer that maps flags to library calls.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser and
sets `func` to a `run(args) -> int`. User mistakes raise `ReptorchError`, printed here as one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from reptorch import __version__
from reptorch.errors import ReptorchError, RunStopped

# Subcommand modules under reptorch.cli, in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "sine", "data", "train", "eval", "compare", "status", "plot", "demo", "theory", "gradcomb",
    "tabular",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reptorch",
        description="Reptile meta-learning: train, evaluate, reproduce the paper.",
    )
    parser.add_argument("--version", action="version", version=f"reptorch {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"reptorch.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RunStopped as stopped:  # SIGINT/SIGTERM: checkpoint written (`run.stop_signals`)
        print(f"reptorch: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except BrokenPipeError:  # the reader of our output left (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except ReptorchError as error:
        # an error every torchrun process raises alike (`reptorch.distributed`): rank 0 prints it
        if not getattr(error, "shared", False) or os.environ.get("RANK", "0") == "0":
            print(f"reptorch: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reptorch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
