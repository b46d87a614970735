"""Sine-wave regression (paper section 4, Figure 1): Reptile, MAML, FOMAML and joint training.

Each method meta-trains an MLP 1-64-64-1 on random sines, then fits held-out sines from 10 points
with 32 steps of SGD. The paper's result: joint training learns the mean of the sines (f = 0) and
stays poor after 32 steps; Reptile and MAML learn an initialisation that fits a new sine quickly.
Set-up of the OpenAI post: inner SGD lr 0.02 over mini-batches of 10 of the 50 points (one epoch,
k = 5), outer step 0.1 annealed linearly to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms import ALGORITHMS
from reptorch.errors import ConfigError
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import SGD
from reptorch.meta import MetaLearner
from reptorch.models import SineMLP
from reptorch.outer import Interpolation
from reptorch.sine import SineTasks
from reptorch.stats import mean_ci95
from reptorch.tree import Params

METHODS = ("reptile", "maml", "fomaml", "joint")
PLOTTED_TASK = 1  # the held-out task drawn in the figure (amplitude 4.9 with the default seed)


@dataclass(frozen=True)
class SineConfig:
    methods: tuple[str, ...] = METHODS
    meta_iters: int = 2000
    meta_batch: int = 4
    inner_batch: int = 10
    inner_iters: int = 5
    inner_lr: float = 0.02
    meta_step: float = 0.5
    meta_step_final: float = 0.0
    eval_shots: int = 10
    eval_steps: int = 32
    eval_every: int = 8
    eval_tasks: int = 200
    seed: int = 0
    activation: str = "tanh"
    tasks: SineTasks = field(default_factory=SineTasks)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
        for name in ("meta_iters", "meta_batch", "inner_batch", "inner_iters", "eval_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.eval_shots <= self.tasks.num_points:
            raise ConfigError(f"eval_shots must be in 1..{self.tasks.num_points}")


def sine_model(config: SineConfig) -> FunctionalModel:
    return FunctionalModel(SineMLP(activation=config.activation), loss_fn=F.mse_loss)


def meta_train(
    method: str, config: SineConfig, progress: Callable[[int], None] | None = None
) -> Params:
    """Meta-trains phi with `method`; joint training takes one step on all 50 points per task."""
    torch.manual_seed(config.seed)  # the MLP's initialisation
    model = sine_model(config)
    inner = SGD(config.inner_lr)
    # no inner state (SGD, reset): "vmap" is the reference's semantics too, and faster
    algorithm = ALGORITHMS[method](model, inner, inner_state="reset", parallel="vmap")
    outer = Interpolation(config.meta_step, config.meta_step_final, config.meta_iters)
    learner = MetaLearner(algorithm, outer, model.init_params())
    generator = torch.Generator().manual_seed(config.seed)
    batch, iters = config.inner_batch, config.inner_iters
    if method == "joint":
        batch, iters = config.tasks.num_points, 1
    for i in range(config.meta_iters):
        tasks = config.tasks.sample_train(
            config.meta_batch, inner_batch=batch, inner_iters=iters, generator=generator
        )
        learner.step(tasks.xs, tasks.ys)
        if progress is not None:
            progress(i + 1)
    return learner.phi


def evaluate(phi: Params, config: SineConfig) -> tuple[dict, dict]:
    """MSE on the grid after 0, 8, ..., 32 SGD steps on `eval_shots` points of held-out tasks.

    The tasks come from a generator seeded apart from training (seed + 10_000), identical for
    every method. Returns ({steps: (mean, ci95)}, {steps: grid prediction of the plotted task}).
    """
    model = sine_model(config)
    generator = torch.Generator().manual_seed(config.seed + 10_000)
    sx, sy, qx, qy = config.tasks.sample_eval(
        config.eval_tasks, config.eval_shots, generator=generator
    )
    oracle = model.batched_loss_and_grad()
    forward = model.batched_forward()
    inner = SGD(config.inner_lr)
    params = tree.expand(phi, config.eval_tasks)
    state = inner.init(phi)
    mse, curves = {}, {}
    for steps in range(0, config.eval_steps + 1, config.eval_every):
        if steps > 0:
            params, state, _ = adapt(oracle, params, [(sx, sy)] * config.eval_every, inner, state)
        with torch.no_grad():
            prediction = forward(params, qx)
        mse[steps] = mean_ci95((prediction - qy).pow(2).mean(dim=(1, 2)))
        curves[steps] = prediction[PLOTTED_TASK, :, 0]
    return mse, curves
