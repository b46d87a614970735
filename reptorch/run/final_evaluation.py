"""The final evaluation of a trained run (`Trainer.evaluate`, `reptorch eval`): phi fine-tuned on
each of N seeded tasks exactly as the reference does, mean +- 95% interval over the tasks.

Shared among the processes of a torchrun job (each its part of the task list), or done in
stages in one process (`reptorch.run.eval_progress`: saved after every chunk, continued after a
stop).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reptorch.config import EVAL_INNER_STATES, TrainConfig
from reptorch.errors import ConfigError, RunStopped
from reptorch.evaluation import EvalResult, Evaluator, default_chunk, task_chunks
from reptorch.fast import fused
from reptorch.run.eval_progress import EvalProgress, model_digest
from reptorch.run.setup import eval_spec
from reptorch.run.stop_signals import StopSignals

if TYPE_CHECKING:
    from reptorch.run.training import Trainer


def evaluate_run(
    trainer: Trainer,
    split: str = "test",
    num_tasks: int | None = None,
    seed: int | None = None,
    inner_state: str = "checkpoint",
    chunk: int | None = None,
    progress: bool = True,
    keep_scores: bool = False,
    keep_predictions: bool = False,
    resume_file: Path | None = None,
    **spec_changes: Any,
) -> dict[str, Any]:
    """The final evaluation of phi on `num_tasks` seeded tasks of `split`: a summary (score
    +- 95% interval, the settings, the time). With several processes each evaluates its
    share of the task list; all get every task's results.

    inner_state: 'checkpoint' starts every task from the carried inner state saved with phi
    (the reference), 'zero' from a fresh one. `spec_changes` override `EvalSpec` fields.
    keep_scores: also every task's score (`"task_scores"`, in task order); keep_predictions:
    the `EvalResult` itself (`"result"`: scores and predictions as tensors).
    resume_file: the tasks' results are saved there after every chunk, and an evaluation
    stopped by SIGINT/SIGTERM (`RunStopped`) or killed continues from it
    (`reptorch.run.eval_progress`; one process only); the file goes when it completes.
    """
    c, group = trainer.config, trainer.group
    request = {"split": split, "tasks": num_tasks, "seed": seed, "inner_state": inner_state}
    group.agree("evaluation settings", {**request, **spec_changes})
    spec = eval_spec(c, **spec_changes)
    if num_tasks is None:  # the run's setting, or the reference's 10,000 if it skipped it
        num_tasks = c.eval_samples or TrainConfig().eval_samples
    seed = c.seed if seed is None else seed
    source = _eval_source(trainer, split, spec.ways)
    if inner_state not in EVAL_INNER_STATES:
        raise ConfigError(
            f"eval_inner_state={inner_state!r}: choose one of {', '.join(EVAL_INNER_STATES)}"
        )
    if num_tasks < 1:
        raise ConfigError(f"eval_samples={num_tasks}: evaluate at least one task")
    phi = trainer.learner.phi
    state = trainer.learner.inner_state if inner_state == "checkpoint" else trainer.inner.init(phi)
    fused.select(c.kernels)  # the run's passes (another Trainer may have selected its own since)
    evaluator = Evaluator(
        trainer.module, trainer.inner, spec, loss_fn=trainer.loss_fn, workers=trainer.workers
    )
    shape = (1,) if c.is_regression else source.dataset.image_shape
    part = group.share(num_tasks)
    digest = model_digest(phi, state)  # sha256 of phi and the inner state evaluated
    staged = None
    if resume_file is not None and group.size == 1:
        key = {**request, "tasks": num_tasks, "seed": seed, **dataclasses.asdict(spec)}
        key |= {"dataset": c.dataset, "model": digest, "kernels": c.kernels}
        staged = EvalProgress.open(resume_file, key)
        part = range(staged.done, num_tasks)
    chunks = task_chunks(source, num_tasks, spec, seed, chunk or default_chunk(spec, shape), part)
    with StopSignals(enabled=staged is not None) as stop:
        result = evaluator.evaluate(
            phi, state, chunks, len(part), progress and group.is_main,
            on_chunk=None if staged is None else staged.add,
            stop=lambda: stop.received is not None,
        )  # fmt: skip
    if staged is not None:
        if staged.done < num_tasks:  # stopped by a signal between chunks
            raise RunStopped(
                f"evaluation stopped by {stop.name} after {staged.done:,} of {num_tasks:,} "
                f"tasks; saved in {resume_file}: rerun the same command to continue",
                int(stop.received or 0),
            )
        scores, predictions = staged.tensors()
        result = EvalResult(scores, predictions, result.metric, staged.seconds)
    if group.size > 1:
        gathered = [
            group.gather_rows(rows, "the evaluation's results")
            for rows in (result.scores, result.predictions)
        ]
        result = EvalResult(*gathered, result.metric, time.perf_counter() - result.started)
    summary = result.summary(spec, split, seed)
    summary.update(
        dataset=c.dataset,
        iteration=trainer.learner.iteration,
        model=digest,
        kernels=c.kernels,  # the blocks' passes (float rounding; `TrainConfig.kernels`)
        eval_inner_state=inner_state,
        tasks_per_second=round(result.scores.numel() / max(result.seconds, 1e-9), 1),
    )
    if staged is not None and len(staged.stages) > 1:
        summary["stages"] = staged.stages  # the sessions it took, their tasks and seconds
    if keep_scores:
        summary["task_scores"] = result.scores.tolist()
    if keep_predictions:
        summary["result"] = result
    return summary


def _eval_source(trainer: Trainer, split: str, ways: int) -> Any:
    """The task source of `split`, for `ways`-way tasks (at most the network's outputs)."""
    c = trainer.config
    if split not in trainer.sources:
        raise ConfigError(
            f"split={split!r}: {c.dataset} has the splits {', '.join(trainer.sources)}"
        )
    source = trainer.sources[split]
    if c.is_regression or ways == c.classes:
        return source
    if ways > c.classes:
        raise ConfigError(
            f"classes={ways}: the network was trained with {c.classes} outputs; "
            f"evaluate at most {c.classes}-way tasks"
        )
    from reptorch.data.tasks import TaskSampler

    return TaskSampler(source.dataset, ways, name=split)
