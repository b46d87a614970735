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
from typing import Any, Protocol

from torch import Tensor, nn

from reptorch.config import EVAL_INNER_STATES, TrainConfig
from reptorch.distributed import Group
from reptorch.errors import ConfigError, RunStopped
from reptorch.evaluation import EvalResult, Evaluator, default_chunk, task_chunks
from reptorch.fast import fused
from reptorch.inner_optim import InnerOptimizer
from reptorch.losses import LossFn
from reptorch.meta import MetaLearner
from reptorch.run.eval_progress import EvalProgress, model_digest
from reptorch.run.setup import eval_spec
from reptorch.run.stop_signals import StopSignals

MODE_NAMES = {False: "non-transductive", True: "transductive"}


class TrainedRun(Protocol):
    """What an evaluation reads of a run (`reptorch.run.training.Trainer` has it all)."""

    config: TrainConfig
    group: Group
    sources: dict[str, Any]  # split -> task source
    learner: MetaLearner  # phi, the carried inner state, the iteration
    inner: InnerOptimizer
    module: nn.Module
    loss_fn: LossFn
    workers: int | None


def evaluate_run(
    trainer: TrainedRun,
    split: str = "test",
    num_tasks: int | None = None,
    resume_file: Path | None = None,
    transductive: bool | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The final evaluation of phi on `num_tasks` seeded tasks of `split` in one mode
    (`transductive`; default: the run's): `evaluate_run_modes` says the rest.

    resume_file: the tasks' results are saved there after every chunk, and an evaluation
    stopped by SIGINT/SIGTERM (`RunStopped`) or killed continues from it
    (`reptorch.run.eval_progress`; one process only); the file goes when it completes.
    """
    mode = trainer.config.transductive if transductive is None else transductive
    resume = None if resume_file is None else {mode: resume_file}
    summaries = evaluate_run_modes(
        trainer, (mode,), split, num_tasks, resume_files=resume, **kwargs
    )
    return summaries[mode]


def evaluate_run_modes(
    trainer: TrainedRun,
    modes: tuple[bool, ...],
    split: str = "test",
    num_tasks: int | None = None,
    seed: int | None = None,
    inner_state: str = "checkpoint",
    chunk: int | None = None,
    progress: bool = True,
    keep_scores: bool = False,
    keep_predictions: bool = False,
    resume_files: dict[bool, Path] | None = None,
    **spec_changes: Any,
) -> dict[bool, dict[str, Any]]:
    """The final evaluation of phi on `num_tasks` seeded tasks of `split`, in each mode of
    `modes` (transductive or not) from one fine-tuning per task: {mode: summary (score +- 95%
    interval, the settings, the time)}. The modes differ only in how the queries are predicted,
    so each summary is what the evaluation in that mode alone gives, task for task, in about
    half the time for two; each has the time of the whole. With several processes each
    evaluates its share of the task list; all get every task's results.

    inner_state: 'checkpoint' starts every task from the carried inner state saved with phi
    (the reference), 'zero' from a fresh one. `spec_changes` override `EvalSpec` fields.
    keep_scores: also every task's score (`"task_scores"`, in task order); keep_predictions:
    the `EvalResult` itself (`"result"`: scores and predictions as tensors).
    resume_files[mode]: that mode's progress file (`evaluate_run`'s resume_file; a joint
    evaluation continues from the mode furthest behind and adds to each what it lacks).
    """
    c, group = trainer.config, trainer.group
    if not modes or len(set(modes)) != len(modes):
        raise ValueError(f"modes={modes!r}: give each of True / False at most once")
    if c.is_regression and len(modes) > 1:
        raise ConfigError(
            f"{c.dataset} is a regression family with one evaluation mode (the queries' MSE), "
            f"not transductive and non-transductive: evaluate it without --both-modes"
        )
    request = {"split": split, "tasks": num_tasks, "seed": seed, "inner_state": inner_state}
    group.agree("evaluation settings", {**request, **spec_changes, "modes": list(modes)})
    specs = [eval_spec(c, **spec_changes, transductive=mode) for mode in modes]
    spec = specs[0]
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
    staged: list[EvalProgress] = []
    if resume_files is not None and group.size == 1:
        key = {**request, "tasks": num_tasks, "seed": seed}
        key |= {"dataset": c.dataset, "model": digest, "kernels": c.kernels}
        staged = [
            EvalProgress.open(resume_files[mode], key | dataclasses.asdict(mode_spec))
            for mode, mode_spec in zip(modes, specs)
        ]
        part = range(min(saved.done for saved in staged), num_tasks)
    chunks = task_chunks(source, num_tasks, spec, seed, chunk or default_chunk(spec, shape), part)
    first = [part.start]  # the task list's index of the next chunk's first task

    def save(rows: list[tuple[Tensor, Tensor]]) -> None:
        for saved, (predicted, score) in zip(staged, rows):
            saved.add(score, predicted, first[0])
        first[0] += len(rows[0][1])

    with StopSignals(enabled=bool(staged)) as stop:
        results = evaluator.evaluate_modes(
            phi, state, chunks, len(part), modes, progress and group.is_main,
            on_chunk=save if staged else None, stop=lambda: stop.received is not None,
        )  # fmt: skip
    if staged:
        done = min(saved.done for saved in staged)
        if done < num_tasks:  # stopped by a signal between chunks
            paths = ", ".join(str(saved.path) for saved in staged)
            raise RunStopped(
                f"evaluation stopped by {stop.name} after {done:,} of {num_tasks:,} "
                f"tasks; saved in {paths}: rerun the same command to continue",
                int(stop.received or 0),
            )
        results = [
            EvalResult(*saved.tensors(), result.metric, saved.seconds)
            for saved, result in zip(staged, results)
        ]
    # which classes the seeded tasks were drawn from (`reptorch compare` pairs on it)
    classes_digest = None if c.is_regression else source.dataset.classes_digest()
    summaries = {}
    for j, (mode, mode_spec, result) in enumerate(zip(modes, specs, results)):
        if group.size > 1:
            gathered = [
                group.gather_rows(rows, "the evaluation's results")
                for rows in (result.scores, result.predictions)
            ]
            result = EvalResult(*gathered, result.metric, time.perf_counter() - result.started)
        summary = result.summary(mode_spec, split, seed)
        summary.update(
            dataset=c.dataset,
            iteration=trainer.learner.iteration,
            model=digest,
            kernels=c.kernels,  # the blocks' passes (float rounding; `TrainConfig.kernels`)
            eval_inner_state=inner_state,
            tasks_per_second=round(result.scores.numel() / max(result.seconds, 1e-9), 1),
        )
        if classes_digest is not None:
            summary["classes_digest"] = classes_digest
        if len(modes) > 1:  # one fine-tuning per task served every mode in this time
            summary["modes_together"] = [MODE_NAMES[m] for m in modes]
        if staged and len(staged[j].stages) > 1:
            summary["stages"] = staged[j].stages  # the sessions it took, their tasks and seconds
        if keep_scores:
            summary["task_scores"] = result.scores.tolist()
        if keep_predictions:
            summary["result"] = result
        summaries[mode] = summary
    return summaries


def _eval_source(trainer: TrainedRun, split: str, ways: int) -> Any:
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
