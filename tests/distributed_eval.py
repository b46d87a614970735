"""Run by tests/test_distributed.py under torchrun: a shared evaluation's per-task results.

    torchrun --nproc-per-node N tests/distributed_eval.py RUN_DIR DATA_DIR TASKS OUT.pt

Every process evaluates its share of the seeded task list (chunks of 3, so chunk and share
boundaries differ), non-transductive and transductive; rank 0 saves what all of them gathered.
"""

from __future__ import annotations

import sys

import torch

from reptorch import distributed
from reptorch.run.training import load_trainer


def main(run: str, data_dir: str, tasks: str, out: str) -> None:
    group = distributed.setup("cpu")
    try:
        trainer = load_trainer(run, "cpu", data_dir, 1, group)
        results = {}
        for transductive in (False, True):
            result = trainer.evaluate(
                num_tasks=int(tasks),
                chunk=3,
                progress=False,
                transductive=transductive,
                keep_predictions=True,
            )["result"]
            results[transductive] = (result.scores, result.predictions)
        if group.is_main:
            torch.save({"size": group.size, "results": results}, out)
    finally:
        distributed.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
