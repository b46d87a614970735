"""A long evaluation in stages: every chunk's task results are saved as it finishes, so that a
stopped `reptorch eval` (SIGINT, SIGTERM, a session's end) continues where it stopped.

The task list and each task's mini-batch indices come from the seed alone, and any range of the
list is evaluated exactly as within the whole (`reptorch.evaluation.task_chunks`), so the tasks
of a resumed evaluation get the results they would have got in one go. The progress file is
kept only while it matches: `key` names everything the results depend on (the settings and a
digest of phi and the inner state); for anything else it starts over.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reptorch.run.io import atomic_write_json
from reptorch.tree import Params


def model_digest(phi: Params, state: Any) -> str:
    """sha256 of phi's and the inner state's tensors (names, shapes, dtypes, bytes), in name
    order: the model an evaluation's results belong to."""
    digest = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = {f"phi.{k}": v for k, v in phi.items()}
    for name, value in getattr(state, "_asdict", dict)().items():
        if isinstance(value, dict):
            tensors |= {f"{name}.{k}": v for k, v in value.items()}
        elif isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            digest.update(f"{name}={value!r};".encode())
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class EvalProgress:
    """The tasks done so far of one evaluation, saved to `path` after every chunk."""

    path: Path
    key: dict[str, Any]
    scores: list[float] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    dtype: str = "int64"  # the predictions': labels, or a regression's float outputs
    _started: float = 0.0

    @classmethod
    def open(cls, path: Path, key: dict[str, Any]) -> EvalProgress:
        """The saved progress of this evaluation, or a fresh one (said on stderr when a file
        for another evaluation or model is replaced)."""
        progress = cls(Path(path), key)
        if progress.path.is_file():
            try:
                saved = json.loads(progress.path.read_text())
                if saved["key"] == key:
                    progress.scores = [float(s) for s in saved["scores"]]
                    progress.predictions = list(saved["predictions"])
                    progress.stages = list(saved["stages"])
                    progress.dtype = str(saved["dtype"])
                    print(
                        f"continuing the evaluation saved in {progress.path}: "
                        f"{progress.done} of {key.get('tasks', '?')} tasks done",
                        file=sys.stderr,
                    )
                else:
                    print(
                        f"note: {progress.path} holds the progress of another evaluation or "
                        f"model; starting this one afresh",
                        file=sys.stderr,
                    )
            except (OSError, ValueError, KeyError, TypeError) as error:
                print(
                    f"note: unreadable {progress.path} ({error}); starting afresh", file=sys.stderr
                )
        progress._started = time.perf_counter()
        progress.stages.append({"first_task": progress.done, "tasks": 0, "seconds": 0.0})
        return progress

    @property
    def done(self) -> int:
        return len(self.scores)

    @property
    def seconds(self) -> float:
        return sum(stage["seconds"] for stage in self.stages)

    def add(
        self, scores: torch.Tensor, predictions: torch.Tensor, first: int | None = None
    ) -> None:
        """One finished chunk: its tasks' scores and predictions, saved at once. `first`: the
        list index of the chunk's first task (default: the next one due); tasks already saved
        are skipped (a joint evaluation continues from the mode furthest behind)."""
        skip = 0 if first is None else self.done - first
        if skip < 0:
            raise ValueError(f"chunk from task {first} leaves a gap after task {self.done}")
        scores, predictions = scores[skip:], predictions[skip:]
        if len(scores) == 0:
            return
        self.scores += scores.tolist()
        self.predictions += predictions.tolist()
        self.dtype = str(predictions.dtype).removeprefix("torch.")
        stage = self.stages[-1]
        stage["tasks"] += len(scores)
        stage["seconds"] = round(time.perf_counter() - self._started, 2)
        atomic_write_json(
            self.path,
            {
                "key": self.key,
                "scores": self.scores,
                "predictions": self.predictions,
                "stages": self.stages,
                "dtype": self.dtype,
            },
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, predictions) of every task done, as the evaluator returns them."""
        return (
            torch.tensor(self.scores, dtype=torch.float64),
            torch.tensor(self.predictions, dtype=getattr(torch, self.dtype)),
        )

    def finish(self) -> None:
        """The evaluation is complete (its result saved elsewhere): the progress file goes."""
        self.path.unlink(missing_ok=True)
