"""Meta-training throughput of the exact sequential mode (`--parallel loop`) against the merged
mode (`--parallel vmap`), through `reptorch train` itself (interval evaluations included), in
interleaved rounds on the same machine.

    python -m bench.train_modes --data-dir ../shared/data --iters 300 --rounds 2
    python -m bench.train_modes --preset omniglot-20w1s --modes loop,loop:2 --nice 19

A mode `loop:N` is the exact mode with `--chain-threads N`; `--nice` runs the trainings niced.

Each round trains a fresh run of the preset for `--iters` meta-iterations in each mode and
reads the wall time of the last `--iters - 50` iterations from its metrics log (the first 50
include start-up: data loading, TorchScript compilation).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(
    preset: str, mode: str, data_dir: str, iters: int, directory: Path, nice: int = 0
) -> float:
    """Iterations per second after the first 50, from the run's metrics.csv."""
    run = directory / f"{preset}-{mode.replace(':', '-')}"
    parallel, _, threads = mode.partition(":")
    subprocess.run(
        ["nice", "-n", str(nice), sys.executable, "-m", "reptorch", "train", "--preset", preset]
        + ["--parallel", parallel, "--chain-threads", threads or "1"]
        + ["--checkpoint", str(run), "--data-dir", data_dir, "--meta-iters", str(iters)]
        + ["--eval-samples", "0", "--no-progress", "--checkpoint-every", str(iters)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    start = next(r for r in rows if int(r["iteration"]) >= 50)
    end = rows[-1]
    done = int(end["iteration"]) - int(start["iteration"])
    return done / (float(end["seconds"]) - float(start["seconds"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot-5w1s")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="loop,vmap", help="comma list: loop, vmap, loop:N")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the trainings")
    args = parser.parse_args()
    modes = args.modes.split(",")
    speeds: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                directory = Path(tmp) / str(r)
                speed = one_run(args.preset, mode, args.data_dir, args.iters, directory, args.nice)
                speeds[mode].append(speed)
                print(f"round {r} {mode}: {speed:.2f} it/s", flush=True)
    first = statistics.median(speeds[modes[0]])
    summary = ", ".join(
        f"{m} {statistics.median(speeds[m]):.2f} it/s ({statistics.median(speeds[m]) / first:.2f}x)"
        for m in modes
    )
    print(f"{args.preset} (nice {args.nice}): {summary}")


if __name__ == "__main__":
    main()
