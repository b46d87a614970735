"""The network side: an MLP, its batched oracle, meta-training through the library's algorithms,
joint pre-training, and fine-tuning on episodes.

Meta-training is `reptorch.algorithms.Reptile` (or `JointTraining`, k = 1) with inner Adam
(`reptorch.inner_optim.Adam`, beta1 = 0, the reference's) and the reference outer update
phi <- phi + eps_t * D with eps_t annealed linearly (`reptorch.outer.Interpolation`). Every
inner step sees the task's whole support set (N * train_shots rows).

The batched oracle `MLPOracle` computes the losses and gradients of E independent networks at
once with batched matrix products: the sum over episodes of each episode's mean cross-entropy has,
for each episode's parameters, exactly that episode's gradient. It is the same function as
`FunctionalModel.vmap_loss_and_grad()` (tests/test_tabular.py), several times faster here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reptorch import tree
from reptorch.adapt import adapt
from reptorch.algorithms import JointTraining, Reptile
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam
from reptorch.outer import Interpolation
from reptorch.tabular.episodes import Episodes
from reptorch.tree import Params


def mlp(dim: int, n_out: int, hidden: int, seed: int) -> nn.Sequential:
    """dim -> hidden -> hidden -> n_out with ReLUs; PyTorch's default init from `seed`."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, n_out),
    )  # fmt: skip


def _layers(params: Params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) pairs in forward order; the keys are nn.Sequential's ('0.weight', ...)."""
    names = sorted({k.split(".")[0] for k in params}, key=int)
    return [(params[f"{n}.weight"], params[f"{n}.bias"]) for n in names]


def batched_forward(params: Params, x: torch.Tensor, features: bool = False) -> torch.Tensor:
    """E networks on E inputs: params with a leading dim E, x (E, B, d) -> logits (E, B, out)
    (or the last hidden layer with `features`)."""
    layers = _layers(params)
    h = x
    for i, (w, b) in enumerate(layers):
        if features and i == len(layers) - 1:
            return h
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h


def batched_loss_and_grad(params: Params, x: torch.Tensor, y: torch.Tensor):
    """(losses (E,), grads of each episode's mean cross-entropy), for E episodes at once."""
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        logits = batched_forward(leaves, x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        losses = losses.view(y.shape).mean(1)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
    return losses.detach(), dict(zip(leaves, grads))


@dataclass(frozen=True)
class MetaConfig:
    """Meta-training settings, declared before any run (not tuned on the test split)."""

    hidden: int = 64
    meta_iters: int = 500
    meta_batch: int = 5
    inner_iters: int = 5
    inner_lr: float = 1e-3
    train_shots: int = 10
    meta_step: float = 1.0
    meta_step_final: float = 0.0


def meta_train(problem, algorithm: str, config: MetaConfig, seed: int) -> tuple[Params, float]:
    """phi after `config.meta_iters` meta-iterations of Reptile ('reptile') or joint training
    ('joint', k = 1) on the problem's meta-train tasks; returns (phi, seconds)."""
    start = time.perf_counter()
    model = FunctionalModel(mlp(problem.dim, problem.n_way, config.hidden, seed), F.cross_entropy)
    inner = Adam(config.inner_lr)
    # the tasks of a meta-batch side by side (merged inner state), as docs/tabular was measured
    options = {"parallel": "vmap", "batched_loss_and_grad": batched_loss_and_grad}
    if algorithm == "reptile":
        algo, k = Reptile(model, inner, **options), config.inner_iters
    elif algorithm == "joint":
        algo, k = JointTraining(model, inner, **options), 1
    else:
        raise ValueError(f"unknown meta-training algorithm {algorithm!r}")
    outer = Interpolation(config.meta_step, config.meta_step_final, config.meta_iters)
    gen = torch.Generator().manual_seed(10_000 + seed)
    phi = model.init_params()
    state = algo.init_inner_state(phi)
    for iteration in range(config.meta_iters):
        x, y = problem.train_tasks(config.meta_batch, config.train_shots, gen)
        xs = x.unsqueeze(1).expand(-1, k, -1, -1)
        ys = y.unsqueeze(1).expand(-1, k, -1)
        step = algo.meta_step(phi, xs, ys, state)
        state = step.inner_state
        phi = outer.update(phi, step.direction, iteration)
    return phi, time.perf_counter() - start


def pretrain(problem, config: MetaConfig, seed: int) -> tuple[Params, float]:
    """Joint pre-training: one classifier over all meta-train classes, Adam (lr = inner_lr), with
    Reptile's compute: meta_iters * inner_iters steps on batches of meta_batch * N * train_shots
    rows (the rows Reptile's inner steps see). Returns its parameters with a fresh N-way head
    (zeros) and the seconds taken."""
    start = time.perf_counter()
    net = mlp(problem.dim, problem.n_pretrain_classes, config.hidden, seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.inner_lr)
    gen = torch.Generator().manual_seed(20_000 + seed)
    size = config.meta_batch * problem.n_way * config.train_shots
    for _ in range(config.meta_iters * config.inner_iters):
        x, y = problem.pretrain_batch(size, gen)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    head = str(len(net) - 1)
    params[f"{head}.weight"] = torch.zeros(problem.n_way, config.hidden)
    params[f"{head}.bias"] = torch.zeros(problem.n_way)
    return params, time.perf_counter() - start


def scratch_init(problem, config: MetaConfig, seed: int) -> Params:
    """A freshly initialised network (PyTorch default init): the 'from scratch' starting point."""
    return FunctionalModel(
        mlp(problem.dim, problem.n_way, config.hidden, 30_000 + seed)
    ).init_params()


def finetune_accuracy(
    phi: Params, episodes: Episodes, lr: float, checkpoints: list[int]
) -> dict[int, torch.Tensor]:
    """Query accuracy (E,) of each episode after s full-batch inner-Adam steps on its support set
    from phi, for every s in `checkpoints` (0: phi untouched)."""
    e = episodes.count
    params = {k: v.expand(e, *v.shape).contiguous() for k, v in phi.items()}
    optimizer = Adam(lr)
    state = optimizer.init(params)
    out: dict[int, torch.Tensor] = {}
    done = 0
    for target in sorted(checkpoints):
        batches = [(episodes.support_x, episodes.support_y)] * (target - done)
        result = adapt(batched_loss_and_grad, params, batches, optimizer, state)
        params, state, done = result.params, result.state, target
        with torch.no_grad():
            pred = batched_forward(params, episodes.query_x).argmax(-1)
        out[target] = (pred == episodes.query_y).float().mean(1)
    return out


def features(phi: Params, x: torch.Tensor) -> torch.Tensor:
    """The last hidden layer of the network phi on x (E, B, d) -> (E, B, hidden)."""
    e = x.shape[0]
    params = tree.tree_map(lambda v: v.expand(e, *v.shape), phi)
    with torch.no_grad():
        return batched_forward(params, x, features=True)
