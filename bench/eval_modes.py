"""Both evaluation modes from one fine-tuning per task against one evaluation per mode, on a
trained run, alternating in one process (docs/benchmarks.md). Checks that each mode's per-task
results are the same either way; writes nothing into the run directory.

    python -m bench.eval_modes --checkpoint runs/miniimagenet-5w1s --data-dir DATA --tasks 30
    python -m bench.eval_modes --checkpoint runs/miniimagenet-5w1s --data-dir DATA --shots 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reptorch.run.training import load_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run directory")
    parser.add_argument("--data-dir")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--shots", type=int)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trainer = load_trainer(args.checkpoint, data_dir=args.data_dir)
    request = dict(num_tasks=args.tasks, shots=args.shots, progress=False, keep_predictions=True)
    times: dict[str, list[float]] = {"one mode at a time": [], "both modes together": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        alone = {m: trainer.evaluate(transductive=m, **request) for m in (False, True)}
        times["one mode at a time"].append(time.perf_counter() - start)
        start = time.perf_counter()
        both = trainer.evaluate_modes((False, True), **request)
        times["both modes together"].append(time.perf_counter() - start)
        for mode in (False, True):
            a, b = alone[mode]["result"], both[mode]["result"]
            if not (torch.equal(a.scores, b.scores) and torch.equal(a.predictions, b.predictions)):
                raise SystemExit(f"transductive={mode}: the per-task results differ")
    separate, together = (statistics.median(v) for v in times.values())
    shots = alone[False]["shots"]
    print(f"{trainer.config.dataset} {alone[False]['ways']}-way {shots}-shot, {args.tasks} tasks,")
    print(f"  the same per-task results in both modes (checked, {args.rounds} rounds)")
    for mode in (False, True):
        name = "transductive" if mode else "non-transductive"
        print(f"  {name}: {100 * both[mode]['accuracy']:.2f}%")
    print(f"  one mode at a time: {separate:.1f} s; both together: {together:.1f} s;")
    print(f"  {separate / together:.2f}x (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
