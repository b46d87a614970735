"""The meta-training loop, read top to bottom: sample tasks, meta-step, evaluate, checkpoint.

As the reference `train`: after meta-iteration i (0-based), if i % eval_interval == 0 one fresh task
of the train split and one of the monitor split (val if the dataset has one, else test) are
evaluated from the current phi and inner state, printed as `batch i: train=... test=...`; a
checkpoint holding i + 1 completed iterations is written every `checkpoint_every` iterations and
at the end. Everything random comes from two generators (task sampling, interval evaluation) whose
states are checkpointed, so a killed run resumes to bit-identical parameters (CPU).

With the exact sequential semantics (`parallel='loop'`) on a CPU the meta-iteration is one chain
of dependent steps, run in one thread; on the fast kernels the interval evaluations then run
beside it in a second thread (`IntervalScores`), on a snapshot of phi and the inner state (their
tasks drawn in order in the main thread), and are logged, in order, before the next evaluation
starts and before every checkpoint. `chain_threads` > 1 gives the chain more threads instead
(`reptorch.chain_threads`).

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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from reptorch import tree
from reptorch.chain_threads import (
    background_thread,
    check_chain_threads,
    resolve_chain_workers,
    torch_threads,
)
from reptorch.config import TrainConfig
from reptorch.data.tasks import EvalTasks
from reptorch.distributed import LOCAL, Group, device_for
from reptorch.errors import RunStopped
from reptorch.evaluation import Evaluator, sample_tasks
from reptorch.fast import fused
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import AdamState, clone_state, make_inner_optimizer
from reptorch.run.checkpoint import Checkpoint, save_checkpoint
from reptorch.run.directory import open_run, read_run, recorded_config
from reptorch.run.final_evaluation import evaluate_run, evaluate_run_modes
from reptorch.run.metrics_log import MetricsLog
from reptorch.run.setup import (
    build_learner,
    build_module,
    build_sources,
    check_group,
    eval_spec,
    evaluation_kernels,
    resolve_kernels,
)
from reptorch.run.stop_signals import StopSignals

EVAL_SEED_OFFSET = 2**33  # the interval-evaluation generator: seed + 2^33

Scores = list[float]


class IntervalScores:
    """The interval evaluations, scored in a background thread beside the chain (or at once,
    without one) and logged in the order they were submitted."""

    def __init__(self, background: ThreadPoolExecutor | None) -> None:
        self.background = background
        self._pending: Callable[[], None] | None = None

    def submit(self, score: Callable[[], Scores], log: Callable[[Scores], None]) -> None:
        """Logs the last evaluation, then scores this one (in the background if there is one)."""
        self.drain()
        if self.background is None:
            log(score())
            return
        future = self.background.submit(score)
        self._pending = lambda: log(future.result())

    def drain(self) -> None:
        """Waits for the evaluation in flight, if any, and logs it."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()


class Trainer:
    """phi, its optimisers and generators for one run; `train()` runs or resumes the loop."""

    def __init__(
        self,
        config: TrainConfig,
        directory: Path | None = None,
        workers: int | None = None,
        group: Group = LOCAL,
        chain_threads: int = 1,
        evaluating: bool = False,
    ) -> None:
        """workers: CPU threads of the fast oracle (see `reptorch.chain_threads.cpu_threads`);
        group: this process's place in a torchrun job (`reptorch.distributed.setup`);
        chain_threads: intra-op threads of the exact sequential chain (`parallel='loop'` on a
        CPU), opt-in. `config.chain_workers` (0: chosen, or the run's recorded value on resume)
        is the workers that split each of the chain's steps (`reptorch.chain_threads`).
        evaluating: built to evaluate a saved run (`load_trainer`), whose settings it does not
        record: a change of them is not announced as a switch of the run."""
        check_group(config, group)
        self.config, self.directory, self.workers, self.group = config, directory, workers, group
        self.echo = True  # print the interval lines (`train(echo=False)` silences them)
        self.seconds, self.iterations = 0.0, 0  # of the last `train()`
        self.device = torch.device(config.device)
        # exact sequential mode: one chain of steps, in this thread (`reptorch.chain_threads`);
        # its interval evaluations get the other thread when both run on the fast kernels
        sequential = config.parallel == "loop" and self.device.type == "cpu"
        self.chain_threads = check_chain_threads(chain_threads, sequential)
        self.sources = build_sources(config)
        self.monitor = "val" if "val" in self.sources else "test"
        module, self.loss_fn = build_module(config, self.sources)
        # the run's recorded settings, read by rank 0 for every process (they must agree)
        recorded = group.from_main(partial(recorded_config, directory), "the run's settings")
        requested = config.chain_workers or (recorded.chain_workers if recorded else 0)
        self.chain_workers = resolve_chain_workers(
            requested, module, sequential, chain_threads, images=config.inner_batch
        )
        if evaluating:
            recorded = None  # nothing is recorded, so nothing switches
        if recorded is not None and recorded.chain_workers != self.chain_workers:
            print(
                f"{directory}: the exact chain switches from {recorded.chain_workers} to "
                f"{self.chain_workers} worker(s) (float rounding changes; recorded in "
                f"config.json)",
                file=sys.stderr,
            )
        kernels = config.kernels or (recorded.kernels if recorded else "")
        kernels = resolve_kernels(kernels, module, config.device)
        if recorded is not None and recorded.kernels != kernels:
            print(
                f"{directory}: the conv blocks switch from the {recorded.kernels} to the "
                f"{kernels} kernels (float rounding changes; recorded in config.json)",
                file=sys.stderr,
            )
        fused.select(kernels)  # before the oracles are made: they take it from the spec
        self.config = config = config.replace(chain_workers=self.chain_workers, kernels=kernels)
        self.module = module.to(self.device)
        self.inner = make_inner_optimizer(config.inner_optimizer, config.learning_rate)
        model = FunctionalModel(self.module, self.loss_fn)
        alone = chain_threads == 1 and self.chain_workers == 1  # the chain holds one core
        concurrent = sequential and alone and model.has_fast_path()
        self.background = background_thread(concurrent)
        self.intervals = IntervalScores(self.background)
        self.evaluator = Evaluator(
            self.module,
            self.inner,
            eval_spec(config),
            loss_fn=self.loss_fn,
            workers=self.chain_workers if sequential else workers,
        )
        chain = self.chain_workers
        oracle = model.batched_loss_and_grad(workers=chain) if sequential else self.evaluator.oracle
        self.learner = build_learner(config, model, self.inner, oracle, group)
        self.train_gen = torch.Generator().manual_seed(config.seed)
        self.eval_gen = torch.Generator().manual_seed(config.seed + EVAL_SEED_OFFSET)

    def restore(self, ckpt: Checkpoint) -> None:
        """Continues from a checkpoint: phi, inner/outer state, RNG states, iteration."""
        dev = self.device
        self.learner.phi = {k: v.to(dev) for k, v in ckpt.phi.items()}
        state = ckpt.inner_state
        if isinstance(state, AdamState):
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

    def interval_eval(self, splits: list[str]) -> Callable[[], Scores]:
        """The reference's per-interval evaluation: draws one fresh task per split now and
        returns the call that scores them from the current phi and inner state (a snapshot of
        them when a background thread scores it); with several processes each scores its share
        of the tasks."""
        drawn = [
            sample_tasks(self.sources[s], 1, self.evaluator.spec, self.eval_gen) for s in splits
        ]
        group = self.group
        phi, state = self.learner.phi, self.learner.inner_state
        if self.background is not None:
            phi, state = tree.clone(phi), clone_state(state)

        def score() -> Scores:
            # this process's tasks in one chunk: side by side, a task per worker, rather than
            # one after the other with each task's images split (measured 1.43 s against 1.70
            # s for Mini-ImageNet's pair on 2 cores; the same scores)
            mine = [drawn[j] for j in group.share(len(drawn))]
            rows = torch.zeros(0, dtype=torch.float64)
            if mine:
                tasks = EvalTasks(*(torch.cat(field) for field in zip(*(t for t, _ in mine))))
                indices = torch.cat([i for _, i in mine])
                rows = self.evaluator.run_chunk(phi, state, tasks, indices)[1].double()
            return group.gather_rows(rows, "the interval evaluation").tolist()

        return score

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
        self._resume()
        start = learner.iteration
        log = MetricsLog(self.directory, self.monitor, start) if self._writes(start < end) else None
        t0 = time.perf_counter()
        bar = tqdm(total=c.meta_iters, initial=start, unit="it", disable=not (progress and main))
        with StopSignals(enabled=self.group.size == 1) as stop:
            for i in range(start, end):
                if stop.received is not None:  # a checkpoint at i iterations, then RunStopped
                    self.intervals.drain()
                    bar.close()
                    self._stop(i, end, log, stop)
                tasks = self.sources["train"].sample_train(
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
                    score = self.interval_eval(["train", self.monitor])
                    loss = float(losses.double().mean())  # exact sum: the same for any layout
                    self.intervals.submit(score, partial(self._log_interval, log, i, eps, loss, t0))
                if self._writes(self._checkpoint_due(i + 1, end)):
                    self.intervals.drain()
                    if log is not None:
                        log.flush()
                    save_checkpoint(self.directory, self.checkpoint(), keep=c.keep)
                bar.update()
                if on_iteration is not None:
                    on_iteration()
        self.intervals.drain()
        bar.close()
        if log is not None:
            log.close()
        self.seconds = time.perf_counter() - t0
        self.iterations = max(end - start, 0)

    def _resume(self) -> None:
        """Restores the run directory's newest checkpoint, if it has one."""
        if self.directory is None:
            return
        open_checkpoint = partial(open_run, self.directory, self.config)
        ckpt = self.group.from_main(open_checkpoint, "the run's checkpoint")
        if ckpt is not None:
            self.restore(ckpt)
            if self.echo:
                tqdm.write(f"resuming {self.directory} from iteration {self.learner.iteration}")

    def _writes(self, due: bool) -> bool:
        """Whether this process writes the run directory now: rank 0 of a run that has one."""
        return due and self.directory is not None and self.group.is_main

    def _checkpoint_due(self, done: int, end: int) -> bool:
        """A checkpoint after every `checkpoint_every` iterations, and at the end."""
        return done % self.config.checkpoint_every == 0 or done == end

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
        t0: float,
        scores: Scores,
    ) -> None:
        train_score, monitor_score = scores
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

    def evaluate(self, split: str = "test", num_tasks: int | None = None, **kwargs: Any):
        """The final evaluation of phi on `num_tasks` seeded tasks of `split`: a summary (score
        +- 95% interval, the settings, the time); `reptorch.run.final_evaluation.evaluate_run`
        says the rest."""
        return evaluate_run(self, split, num_tasks, **kwargs)

    def evaluate_modes(self, modes: tuple[bool, ...], split: str = "test", **kwargs: Any):
        """`evaluate` in each mode of `modes` (transductive or not) from one fine-tuning per
        task: {mode: summary}, each what `evaluate` in that mode gives
        (`reptorch.run.final_evaluation.evaluate_run_modes`)."""
        return evaluate_run_modes(self, modes, split, **kwargs)


def load_trainer(
    directory: Path,
    device: str | None = None,
    data_dir: str | None = None,
    workers: int | None = None,
    group: Group = LOCAL,
    iteration: int | None = None,
) -> Trainer:
    """A `Trainer` rebuilt from a run directory alone: its config.json and newest checkpoint,
    or the one at `iteration` (read by rank 0 and handed to every process)."""
    directory = Path(directory)
    read = partial(read_run, directory, iteration)
    config, ckpt = group.from_main(read, "the run's checkpoint")
    if device is None and config.device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"  # trained on a GPU, evaluated where there is none
    device = device_for(group, device or config.device)
    changes = {k: v for k, v in {"device": device, "data_dir": data_dir}.items() if v}
    changes["kernels"] = evaluation_kernels(config, directory, device, group)
    trainer = Trainer(config.replace(**changes), directory, workers, group, evaluating=True)
    trainer.restore(ckpt)
    return trainer
