"""Few-shot evaluation exactly as the reference's `Reptile.evaluate`, for many tasks at once.

Per task: fine-tune phi on the support set (N classes x K shots) with `inner_iters` optimiser
steps on mini-batches of `inner_batch` drawn by `minibatch_indices` from the support set, starting
from a fixed inner optimiser state (the reference restores all variables, Adam's slots included,
around each evaluation task: every task starts from the state saved with the model, and nothing
leaks between tasks); then predict the queries, BatchNorm always on batch statistics:
- transductive: all N*Q queries in one batch (statistics from the queries);
- non-transductive: each query in a batch of the whole support set plus that one sample, taking
  the last row's prediction (statistics from support + 1).
Accuracy per task = correct / (N*Q); reported as mean +- 1.96 sigma / sqrt(n) over tasks.
Tasks are vmapped in chunks; the task list and mini-batch indices are drawn from the seed alone,
so results do not depend on the chunk size, nor on which process evaluates which part of the
list (`task_chunks(..., part)`, shared among the processes of a torchrun job). Regression
tasks (sine) report the query MSE instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.data.tasks import EvalTaskList, EvalTasks, TaskSampler, batched_minibatch_indices
from reptorch.functional import FunctionalModel, LossFn
from reptorch.inner_optim import InnerOptimizer
from reptorch.stats import mean_ci95
from reptorch.tree import Params

INDEX_SEED_OFFSET = 2**32  # mini-batch indices come from seed + 2^32, tasks from seed


@dataclass(frozen=True)
class EvalSpec:
    ways: int
    shots: int
    inner_iters: int
    inner_batch: int
    transductive: bool = False
    queries: int = 1
    replacement: bool = False
    weight_decay: float = 1.0
    regression: bool = False

    @property
    def support_size(self) -> int:
        """Samples in a support set: N*K (a regression task's K points)."""
        return self.shots if self.regression else self.ways * self.shots


@dataclass(frozen=True)
class EvalResult:
    scores: torch.Tensor  # (tasks,) accuracy in 0..1 per task, or MSE for regression
    predictions: torch.Tensor  # (tasks, N*Q) predicted labels, or (tasks, Q, 1) outputs
    metric: str  # "accuracy" or "mse"
    seconds: float
    started: float = 0.0  # time.perf_counter() at the start

    @property
    def mean_ci(self) -> tuple[float, float]:
        return mean_ci95(self.scores)

    def summary(self, spec: EvalSpec, split: str, seed: int) -> dict[str, Any]:
        mean, ci = self.mean_ci
        return {
            self.metric: mean,
            "ci95": ci,
            "tasks": int(self.scores.numel()),
            "ways": spec.ways,
            "shots": spec.shots,
            "queries": spec.queries,
            "transductive": spec.transductive,
            "split": split,
            "seed": seed,
            "inner_steps": spec.inner_iters,
            "inner_batch": spec.inner_batch,
            "seconds": round(self.seconds, 2),
        }


class Evaluator:
    """Fine-tunes and predicts T tasks at once with the vmapped (or `reptorch.fast`) oracle."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: InnerOptimizer,
        spec: EvalSpec,
        *,
        loss_fn: LossFn | None = None,
        use_fast: bool = True,
        workers: int | None = None,
    ) -> None:
        self.model = (
            FunctionalModel(module) if loss_fn is None else FunctionalModel(module, loss_fn)
        )
        self.optimizer, self.spec = optimizer, spec
        self.oracle = self.model.batched_loss_and_grad(fast=use_fast, workers=workers)
        self.forward = self.model.batched_forward(fast=use_fast, workers=workers)

    def adapt(self, phi: Params, state: Any, tasks: EvalTasks, indices: torch.Tensor):
        """`inner_iters` steps from (phi, state) on each task's support batches: `AdaptResult`
        (theta_k, final state, per-step losses)."""
        sx, sy = tasks.support_xs, tasks.support_ys
        rows = torch.arange(sx.shape[0], device=sx.device).unsqueeze(1)
        batches = [(sx[rows, idx], sy[rows, idx]) for idx in indices.unbind(1)]
        params = tree.expand(phi, sx.shape[0])
        wd = self.spec.weight_decay
        return adapt(self.oracle, params, batches, self.optimizer, state, weight_decay=wd)

    def fine_tune(self, phi: Params, state: Any, tasks: EvalTasks, indices: torch.Tensor):
        """theta_k of each task: `inner_iters` steps from (phi, state) on its support batches."""
        return self.adapt(phi, state, tasks, indices).params

    @torch.no_grad()
    def outputs(
        self, params: Params, tasks: EvalTasks, transductive: bool | None = None
    ) -> torch.Tensor:
        """Network outputs for the queries, (T, N*Q, classes): all queries in one batch
        (transductive, regression), or each in a batch with the support set, its own row kept.
        `transductive`: the mode (default: the spec's)."""
        qx = tasks.query_xs
        transductive = self.spec.transductive if transductive is None else transductive
        if self.spec.regression or transductive:
            return self.forward(params, qx)
        sx = tasks.support_xs
        columns = [
            self.forward(params, torch.cat([sx, qx[:, j : j + 1]], 1))[:, -1]
            for j in range(qx.shape[1])
        ]
        return torch.stack(columns, 1)

    def predict(
        self, params: Params, tasks: EvalTasks, transductive: bool | None = None
    ) -> torch.Tensor:
        """Predicted labels (T, N*Q), or outputs (T, Q, 1) for regression."""
        outputs = self.outputs(params, tasks, transductive)
        return outputs if self.spec.regression else outputs.argmax(-1)

    def scores(self, tasks: EvalTasks, predictions: torch.Tensor) -> torch.Tensor:
        """Per task: accuracy over its queries, or the mean squared error (regression)."""
        if self.spec.regression:
            return (predictions - tasks.query_ys).pow(2).flatten(1).mean(1)
        return (predictions == tasks.query_ys).double().mean(1)

    def run_chunk(self, phi: Params, state: Any, tasks: EvalTasks, indices: torch.Tensor):
        """(predictions, per-task scores) for one chunk of tasks, moved to phi's device."""
        return self.run_chunk_modes(phi, state, tasks, indices, (self.spec.transductive,))[0]

    def run_chunk_modes(
        self,
        phi: Params,
        state: Any,
        tasks: EvalTasks,
        indices: torch.Tensor,
        modes: tuple[bool, ...],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`run_chunk` in each mode of `modes` (transductive or not) from one fine-tuning: the
        modes differ only in how the queries are predicted, so each gets what a chunk of its
        own would (the same tasks, mini-batches and theta_k)."""
        device = next(iter(phi.values())).device
        tasks = EvalTasks(*(t.to(device) for t in tasks))
        params = self.fine_tune(phi, state, tasks, indices.to(device))
        results = []
        for transductive in modes:
            predictions = self.predict(params, tasks, transductive)
            results.append((predictions, self.scores(tasks, predictions).cpu()))
        return results

    def evaluate(
        self,
        phi: Params,
        state: Any,
        chunks: Iterator[tuple[EvalTasks, torch.Tensor]],
        total: int,
        progress: bool = True,
        on_chunk: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> EvalResult:
        """Every chunk's tasks fine-tuned and scored; `on_chunk(scores, predictions)` after each
        (a resumable evaluation saves them), and no further chunk once `stop()` is true."""
        callback = None
        if on_chunk is not None:

            def callback(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
                predicted, score = rows[0]
                on_chunk(score, predicted)

        modes = (self.spec.transductive,)
        return self.evaluate_modes(phi, state, chunks, total, modes, progress, callback, stop)[0]

    def evaluate_modes(
        self,
        phi: Params,
        state: Any,
        chunks: Iterator[tuple[EvalTasks, torch.Tensor]],
        total: int,
        modes: tuple[bool, ...],
        progress: bool = True,
        on_chunk: Callable[[list[tuple[torch.Tensor, torch.Tensor]]], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> list[EvalResult]:
        """`evaluate` in each mode of `modes` from one fine-tuning per task (`run_chunk_modes`):
        one `EvalResult` per mode, all with the time of the whole; `on_chunk` gets the chunk's
        (predictions, scores) per mode."""
        start = time.perf_counter()
        predictions: list[list[torch.Tensor]] = [[] for _ in modes]
        scores: list[list[torch.Tensor]] = [[] for _ in modes]
        with tqdm(total=total, unit="task", desc="eval", disable=not progress, leave=False) as bar:
            for tasks, indices in chunks:
                rows = self.run_chunk_modes(phi, state, tasks, indices, modes)
                rows = [(predicted.cpu(), score) for predicted, score in rows]
                for j, (predicted, score) in enumerate(rows):
                    predictions[j].append(predicted)
                    scores[j].append(score)
                bar.update(len(rows[0][1]))
                if on_chunk is not None:
                    on_chunk(rows)
                if stop is not None and stop():
                    break
        metric = "mse" if self.spec.regression else "accuracy"
        if not scores[0]:  # no task in this process's share
            return [EvalResult(torch.zeros(0), torch.zeros(0), metric, 0.0, start) for _ in modes]
        seconds = time.perf_counter() - start
        return [
            EvalResult(torch.cat(s), torch.cat(p), metric, seconds, start)
            for s, p in zip(scores, predictions)
        ]


def sample_tasks(source: Any, num: int, spec: EvalSpec, generator: torch.Generator):
    """`num` fresh tasks and their mini-batch indices from one generator (interval evaluation)."""
    tasks = source.sample_eval(num, spec.shots, spec.queries, generator=generator)
    indices = batched_minibatch_indices(
        num, spec.support_size, spec.inner_batch, spec.inner_iters, spec.replacement, generator
    )
    return tasks, indices


def task_chunks(
    source: Any, num_tasks: int, spec: EvalSpec, seed: int, chunk: int, part: range | None = None
) -> Iterator[tuple[EvalTasks, torch.Tensor]]:
    """The fixed, seeded evaluation tasks in chunks of `chunk`, with their mini-batch indices;
    `part`: only these tasks of the list (a process's share), the same as in the whole list."""
    part = range(num_tasks) if part is None else part
    index_gen = torch.Generator().manual_seed(seed + INDEX_SEED_OFFSET)
    indices = batched_minibatch_indices(
        num_tasks,
        spec.support_size,
        spec.inner_batch,
        spec.inner_iters,
        spec.replacement,
        index_gen,
    )
    if isinstance(source, TaskSampler):
        task_list = EvalTaskList(source, num_tasks, spec.shots, spec.queries, seed)
        batches = task_list.batches(chunk, part.start, part.stop)
    else:  # a generated family (sine): small enough to draw at once
        everything = source.sample_eval(
            num_tasks, spec.shots, spec.queries, generator=torch.Generator().manual_seed(seed)
        )
        batches = (
            EvalTasks(*(t[s : min(s + chunk, part.stop)] for t in everything))
            for s in range(part.start, part.stop, chunk)
        )
    for start, tasks in zip(range(part.start, part.stop, chunk), batches):
        yield tasks, indices[start : min(start + chunk, part.stop)]


def default_chunk(spec: EvalSpec, sample_shape: tuple[int, ...]) -> int:
    """Tasks per chunk: ~1e8 floats of first-layer activations per step, between 1 and 500."""
    pixels = 1
    for size in sample_shape:
        pixels *= size
    per_task = max(spec.inner_batch, spec.support_size + 1) * pixels
    return max(1, min(500, int(1e8 // (per_task * 16))))
