"""The meta-training loop, read top to bottom: sample tasks, meta-step, evaluate, checkpoint.

As the reference `train`: after meta-iteration i (0-based), if i % eval_interval == 0 one fresh task
of the train split and one of the monitor split (val if the dataset has one, else test) are
evaluated from the current phi and inner state, printed as `batch i: train=... test=...`; a
checkpoint holding i + 1 completed iterations is written every `checkpoint_every` iterations and
at the end. Everything random comes from two generators (task sampling, interval evaluation) whose
states are checkpointed, so a killed run resumes to bit-identical parameters (CPU).

With the exact sequential semantics (`parallel='loop'`) on a CPU the meta-iteration is one chain
of dependent steps, run in one thread; on the fast kernels the interval evaluations then run
beside it in a second thread, on a snapshot of phi and the inner state (their tasks drawn in order
in the main thread), and are logged, in order, before the next evaluation starts and before every
checkpoint. `chain_threads` > 1 gives the chain more threads instead (`reptorch.chain_threads`).

Under torchrun (`reptorch.distributed`) every process builds the same Trainer: the meta-batch's
tasks, the interval evaluations' tasks and the final evaluation's task list are shared among the
processes and their results combined, so the run ends where one process would (to float
rounding); rank 0 alone reads and writes the run directory and prints, and hands the others the
checkpoint it resumes from.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from reptorch import tree
from reptorch.algorithms import ALGORITHMS
from reptorch.chain_threads import (
    background_thread,
    check_chain_threads,
    resolve_chain_workers,
    torch_threads,
)
from reptorch.checkpoint import Checkpoint, save_checkpoint
from reptorch.config import EVAL_INNER_STATES, TrainConfig
from reptorch.distributed import LOCAL, Group, device_for
from reptorch.errors import ConfigError, RunStopped
from reptorch.evaluation import (
    EvalResult,
    EvalSpec,
    Evaluator,
    default_chunk,
    sample_tasks,
    task_chunks,
)
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import clone_state, make_inner_optimizer
from reptorch.meta import MetaLearner
from reptorch.metrics_log import MetricsLog
from reptorch.outer import Interpolation, OuterOptimizer
from reptorch.run_directory import open_run, read_run, recorded_chain_workers
from reptorch.run_setup import build_module, build_sources, check_group, eval_spec
from reptorch.stop_signals import StopSignals

EVAL_SEED_OFFSET = 2**33  # the interval-evaluation generator: seed + 2^33


class Trainer:
    """phi, its optimisers and generators for one run; `train()` runs or resumes the loop."""

    def __init__(
        self,
        config: TrainConfig,
        directory: Path | None = None,
        workers: int | None = None,
        group: Group = LOCAL,
        chain_threads: int = 1,
    ) -> None:
        """workers: CPU threads of the fast oracle (see `reptorch.cli.common.cpu_threads`);
        group: this process's place in a torchrun job (`reptorch.distributed.setup`);
        chain_threads: intra-op threads of the exact sequential chain (`parallel='loop'` on a
        CPU), opt-in. `config.chain_workers` (0: chosen, or the run's recorded value on resume)
        is the workers that split each of the chain's steps (`reptorch.chain_threads`)."""
        check_group(config, group)
        self.config, self.directory, self.workers, self.group = config, directory, workers, group
        self.echo = True  # print the interval lines (`train(echo=False)` silences them)
        self.device = torch.device(config.device)
        # exact sequential mode: one chain of steps, in this thread (`reptorch.chain_threads`);
        # its interval evaluations get the other thread when both run on the fast kernels
        sequential = config.parallel == "loop" and self.device.type == "cpu"
        self.chain_threads = check_chain_threads(chain_threads, sequential)
        self.sources = build_sources(config)
        self.monitor = "val" if "val" in self.sources else "test"
        module, loss_fn = build_module(config, self.sources)
        recorded = recorded_chain_workers(directory) if group.is_main else None
        requested = config.chain_workers or recorded or 0
        self.chain_workers = resolve_chain_workers(requested, module, sequential, chain_threads)
        if recorded is not None and recorded != self.chain_workers:
            print(
                f"{directory}: the exact chain switches from {recorded} to {self.chain_workers} "
                f"worker(s) (float rounding changes; recorded in config.json)",
                file=sys.stderr,
            )
        self.config = config = config.replace(chain_workers=self.chain_workers)
        self.module = module.to(self.device)
        self.inner = make_inner_optimizer(config.inner_optimizer, config.learning_rate)
        self.loss_fn = loss_fn
        model = FunctionalModel(self.module, loss_fn)
        alone = chain_threads == 1 and self.chain_workers == 1  # the chain holds one core
        concurrent = sequential and alone and model.has_fast_path()
        self.background = background_thread(concurrent)
        self.evaluator = Evaluator(
            self.module,
            self.inner,
            eval_spec(config),
            loss_fn=loss_fn,
            workers=self.chain_workers if sequential else workers,
        )
        algorithm = ALGORITHMS[config.algorithm](
            model,
            self.inner,
            inner_state=config.inner_state,
            parallel=config.parallel,
            weight_decay=config.weight_decay,
            batched_loss_and_grad=(
                model.batched_loss_and_grad(workers=self.chain_workers)
                if sequential
                else self.evaluator.oracle
            ),
        )
        phi = model.init_params()
        args = (config.meta_step, config.meta_step_final, config.meta_iters)
        if config.outer == "interpolate":
            outer: Interpolation = Interpolation(*args)
        else:
            outer = OuterOptimizer(config.outer, phi, *args)
        self.learner = MetaLearner(algorithm, outer, phi, group)
        self.train_gen = torch.Generator().manual_seed(config.seed)
        self.eval_gen = torch.Generator().manual_seed(config.seed + EVAL_SEED_OFFSET)

    def restore(self, ckpt: Checkpoint) -> None:
        """Continues from a checkpoint: phi, inner/outer state, RNG states, iteration."""
        dev = self.device
        self.learner.phi = {k: v.to(dev) for k, v in ckpt.phi.items()}
        state = ckpt.inner_state
        if hasattr(state, "exp_avg"):
            state = state._replace(
                exp_avg={k: v.to(dev) for k, v in state.exp_avg.items()},
                exp_avg_sq={k: v.to(dev) for k, v in state.exp_avg_sq.items()},
            )
        self.learner.inner_state = state
        self.learner.outer.load_state_dict(ckpt.outer_state)
        self.learner.iteration = ckpt.iteration
        self.train_gen.set_state(ckpt.rng["train"])
        self.eval_gen.set_state(ckpt.rng["eval"])

    def checkpoint(self) -> Checkpoint:
        rng = {"train": self.train_gen.get_state(), "eval": self.eval_gen.get_state()}
        learner = self.learner
        outer = learner.outer.state_dict()
        return Checkpoint(learner.iteration, learner.phi, learner.inner_state, outer, rng)

    def quick_eval(self, split: str) -> float:
        """Score on one fresh task of `split` (the reference's per-interval evaluation)."""
        return self.interval_eval([split])().pop()

    def interval_eval(self, splits: list[str]) -> Callable[[], list[float]]:
        """Draws one task per split now; returns a call giving their scores. With a background
        thread the scoring runs there meanwhile, on a snapshot of phi and the inner state; with
        several processes each scores its share of the tasks."""
        drawn = [
            sample_tasks(self.sources[s], 1, self.evaluator.spec, self.eval_gen) for s in splits
        ]
        learner, group = self.learner, self.group
        phi, state = learner.phi, learner.inner_state

        def score() -> list[float]:
            part = group.share(len(drawn))
            mine = [self.evaluator.run_chunk(phi, state, *drawn[j])[1].double() for j in part]
            rows = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.float64)
            scores = group.gather_rows(rows, "the interval evaluation")
            return scores.tolist()

        if self.background is None:
            return score
        phi, state = tree.clone(phi), clone_state(state)
        return self.background.submit(score).result

    def train(
        self,
        progress: bool = True,
        *,
        stop_at: int | None = None,
        on_iteration: Callable[[], None] | None = None,
        echo: bool = True,
    ) -> None:
        """Runs (or resumes) meta-training up to `meta_iters`, logging and checkpointing.

        stop_at: pause after that many iterations (checkpointed there; the schedule still spans
        `meta_iters`), so that several runs can advance in turns (`reptorch gradcomb`).
        on_iteration: called after every meta-iteration (an outer progress bar). echo: print
        the `batch i: train=... test=...` lines (rank 0 only).
        """
        with torch_threads(self.chain_threads):
            self._train(progress, stop_at, on_iteration, echo)

    def _train(
        self,
        progress: bool,
        stop_at: int | None,
        on_iteration: Callable[[], None] | None,
        echo: bool,
    ) -> None:
        c, learner, main = self.config, self.learner, self.group.is_main
        end = c.meta_iters if stop_at is None else min(stop_at, c.meta_iters)
        self.echo = echo and main
        if self.directory is not None:
            directory = self.directory
            ckpt = self.group.from_main(partial(open_run, directory, c), "the run's checkpoint")
            if ckpt is not None:
                self.restore(ckpt)
                if self.echo:
                    tqdm.write(f"resuming {directory} from iteration {learner.iteration}")
        start = learner.iteration
        log = None
        if self.directory is not None and start < end and main:
            log = MetricsLog(self.directory, self.monitor, start)
        t0 = time.perf_counter()
        source = self.sources["train"]
        bar = tqdm(total=c.meta_iters, initial=start, unit="it", disable=not (progress and main))
        pending: Callable[[], None] | None = None  # logs the last interval evaluation

        def finish() -> None:
            nonlocal pending
            if pending is not None:
                pending()
                pending = None

        stop = StopSignals(enabled=self.group.size == 1)
        with stop:
            for i in range(start, end):
                if stop.received is not None:  # a checkpoint at i iterations, then RunStopped
                    finish()
                    bar.close()
                    self._stop(i, end, log, stop)
                tasks = source.sample_train(
                    c.meta_batch,
                    c.effective_train_shots,
                    c.inner_batch,
                    c.inner_iters,
                    c.replacement,
                    c.foml_tail,
                    generator=self.train_gen,
                )
                tail = None if tasks.tail is None else tuple(t.to(self.device) for t in tasks.tail)
                eps = learner.outer.step_size(i)
                losses = learner.step(tasks.xs.to(self.device), tasks.ys.to(self.device), tail)
                if i % c.eval_interval == 0:
                    finish()
                    scores = self.interval_eval(["train", self.monitor])
                    loss = float(losses.double().mean())  # exact sum: the same for any layout
                    pending = partial(self._log_interval, log, i, eps, loss, scores, t0)
                    if self.background is None:
                        finish()
                if (
                    self.directory is not None
                    and main
                    and ((i + 1) % c.checkpoint_every == 0 or i + 1 == end)
                ):
                    finish()
                    if log is not None:
                        log.flush()
                    save_checkpoint(self.directory, self.checkpoint(), keep=c.keep)
                bar.update()
                if on_iteration is not None:
                    on_iteration()
        finish()
        bar.close()
        if log is not None:
            log.close()
        self.seconds = time.perf_counter() - t0
        self.iterations = max(end - start, 0)

    def _stop(self, done: int, end: int, log: MetricsLog | None, stop: StopSignals) -> None:
        """After a SIGINT/SIGTERM: checkpoint the `done` iterations, then raise `RunStopped`."""
        where, signum = f"after {done:,} of {end:,} meta-iterations", int(stop.received or 0)
        if self.directory is None:
            raise RunStopped(f"stopped by {stop.name} {where} (no run directory)", signum)
        if log is not None:
            log.close()
        if self.group.is_main:
            save_checkpoint(self.directory, self.checkpoint(), keep=self.config.keep)
        raise RunStopped(
            f"stopped by {stop.name} {where}; checkpoint written to {self.directory}: rerun the "
            "same command to resume",
            signum,
        )

    def _log_interval(
        self,
        log: MetricsLog | None,
        i: int,
        eps: float,
        inner_loss: float,
        scores: Callable[[], list[float]],
        t0: float,
    ) -> None:
        train_score, monitor_score = scores()
        if self.echo:
            tqdm.write(f"batch {i}: train={train_score:f} {self.monitor}={monitor_score:f}")
        if log is not None:
            log.log(
                i,
                meta_step=eps,
                inner_loss=inner_loss,
                train=train_score,
                monitor=monitor_score,
                seconds=round(time.perf_counter() - t0, 3),
                metric="mse" if self.config.is_regression else "accuracy",
            )

    def evaluate(
        self,
        split: str = "test",
        num_tasks: int | None = None,
        seed: int | None = None,
        inner_state: str = "checkpoint",
        chunk: int | None = None,
        progress: bool = True,
        keep_scores: bool = False,
        **spec_changes: Any,
    ) -> dict[str, Any]:
        """The summary (a dict) of `evaluation(...)` with the same arguments; keep_scores: also
        every task's score (`"task_scores"`, in task order)."""
        args = (split, num_tasks, seed, inner_state, chunk, progress)
        result, spec, seed = self.evaluation(*args, **spec_changes)
        summary = result.summary(spec, split, seed)
        summary.update(
            dataset=self.config.dataset,
            iteration=self.learner.iteration,
            eval_inner_state=inner_state,
            tasks_per_second=round(result.scores.numel() / max(result.seconds, 1e-9), 1),
        )
        if keep_scores:
            summary["task_scores"] = result.scores.tolist()
        return summary

    def evaluation(
        self,
        split: str = "test",
        num_tasks: int | None = None,
        seed: int | None = None,
        inner_state: str = "checkpoint",
        chunk: int | None = None,
        progress: bool = True,
        **spec_changes: Any,
    ) -> tuple[EvalResult, EvalSpec, int]:
        """The final evaluation of phi on `num_tasks` seeded tasks of `split`: scores and
        predictions per task, the spec and the seed. With several processes each evaluates its
        share of the task list; all get every task's results.

        inner_state: 'checkpoint' starts every task from the carried inner state saved with phi
        (the reference), 'zero' from a fresh one. `spec_changes` override `EvalSpec` fields.
        """
        c, group = self.config, self.group
        request = {"split": split, "tasks": num_tasks, "seed": seed, "inner_state": inner_state}
        group.agree("evaluation settings", {**request, **spec_changes})
        spec = eval_spec(c, **spec_changes)
        if num_tasks is None:  # the run's setting, or the reference's 10,000 if it skipped it
            num_tasks = c.eval_samples or TrainConfig().eval_samples
        seed = c.seed if seed is None else seed
        if split not in self.sources:
            raise ConfigError(
                f"split={split!r}: {c.dataset} has the splits {', '.join(self.sources)}"
            )
        if inner_state not in EVAL_INNER_STATES:
            raise ConfigError(
                f"eval_inner_state={inner_state!r}: choose one of {', '.join(EVAL_INNER_STATES)}"
            )
        if num_tasks < 1:
            raise ConfigError(f"eval_samples={num_tasks}: evaluate at least one task")
        source = self.sources[split]
        if not c.is_regression:
            if spec.ways > c.classes:
                raise ConfigError(
                    f"classes={spec.ways}: the network was trained with {c.classes} outputs; "
                    f"evaluate at most {c.classes}-way tasks"
                )
            if spec.ways != c.classes:
                from reptorch.data.tasks import TaskSampler

                source = TaskSampler(source.dataset, spec.ways, name=split)
        phi = self.learner.phi
        state = self.learner.inner_state if inner_state == "checkpoint" else self.inner.init(phi)
        evaluator = Evaluator(
            self.module, self.inner, spec, loss_fn=self.loss_fn, workers=self.workers
        )
        shape = (1,) if c.is_regression else source.dataset.image_shape
        chunk = chunk or default_chunk(spec, shape)
        part = group.share(num_tasks)
        chunks = task_chunks(source, num_tasks, spec, seed, chunk, part)
        result = evaluator.evaluate(phi, state, chunks, len(part), progress and group.is_main)
        if group.size > 1:
            gathered = [
                group.gather_rows(rows, "the evaluation's results")
                for rows in (result.scores, result.predictions)
            ]
            result = EvalResult(*gathered, result.metric, time.perf_counter() - result.started)
        return result, spec, seed


def load_trainer(
    directory: Path,
    device: str | None = None,
    data_dir: str | None = None,
    workers: int | None = None,
    group: Group = LOCAL,
) -> Trainer:
    """A `Trainer` rebuilt from a run directory alone: its config.json and newest checkpoint
    (read by rank 0 and handed to every process)."""
    directory = Path(directory)
    config, ckpt = group.from_main(partial(read_run, directory), "the run's checkpoint")
    if device is None and config.device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"  # trained on a GPU, evaluated where there is none
    device = device_for(group, device or config.device)
    changes = {k: v for k, v in {"device": device, "data_dir": data_dir}.items() if v}
    trainer = Trainer(config.replace(**changes), directory, workers, group)
    trainer.restore(ckpt)
    return trainer
