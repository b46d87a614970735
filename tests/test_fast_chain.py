"""The exact chain in the fast oracle's own loop (`reptorch.fast.chain`): bit for bit the
task-by-task path of `MetaAlgorithm.sequential`, and taken only where it applies."""

from __future__ import annotations

import pytest
import torch

from reptorch import tree
from reptorch.algorithms.fomaml import FOMAML
from reptorch.algorithms.reptile import Reptile
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import SGD, Adam
from reptorch.losses import cross_entropy_sum
from reptorch.models import FourBlockNet, OmniglotNet

NETS = {
    "omniglot": (lambda: OmniglotNet(5), (1, 28, 28)),
    "miniimagenet": (  # Mini-ImageNet's layers (PyTorch's convolutions, pooling) at 8 filters
        lambda: FourBlockNet(5, filters=8, in_channels=3, stride=1, pool=True, side=2),
        (3, 21, 21),
    ),
}


def _chain_inputs(shape, tasks=3, steps=2, images=6, seed=4):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.rand(tasks, steps, images, *shape, generator=gen)
    ys = torch.randint(0, 5, (tasks, steps, images), generator=gen)
    return xs, ys


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize(
    ("net", "workers"), [("omniglot", 1), ("omniglot", 2), ("miniimagenet", 2)]
)
def test_the_chain_loop_is_the_task_by_task_chain(net, workers, optimizer, monkeypatch):
    torch.manual_seed(0)
    make, shape = NETS[net]
    model = FunctionalModel(make(), cross_entropy_sum)
    oracle = model.batched_loss_and_grad(workers=workers)
    opt = Adam(1e-3) if optimizer == "adam" else SGD(0.05)
    algorithm = Reptile(model, opt, parallel="loop", batched_loss_and_grad=oracle)
    algorithm.weight_decay = 0.99
    phi = model.init_params()
    state = opt.init(phi)
    if optimizer == "adam":  # a carried state: nonzero moments, step > 0
        state = state._replace(
            step=7, exp_avg_sq=tree.tree_map(lambda v: v + 1e-6, state.exp_avg_sq)
        )
    xs, ys = _chain_inputs(shape)
    used = []
    chain = oracle.chain
    monkeypatch.setattr(oracle, "chain", lambda *a, **k: used.append(1) or chain(*a, **k))
    fast = algorithm.meta_step(phi, xs, ys, state)
    assert used == [1]
    algorithm.updates_from_weights = False  # the task-by-task path
    slow = algorithm.meta_step(phi, xs, ys, state)
    assert used == [1]
    assert torch.equal(fast.losses, slow.losses) and fast.losses.shape == (3, 2)
    for name in phi:
        assert torch.equal(fast.direction[name], slow.direction[name]), name
    assert fast.inner_state.step == slow.inner_state.step
    if optimizer == "adam":
        for moment in ("exp_avg", "exp_avg_sq"):
            for name in phi:
                a = getattr(fast.inner_state, moment)[name]
                assert torch.equal(a, getattr(slow.inner_state, moment)[name]), (moment, name)


@pytest.mark.parametrize("case", ["fomaml", "reset", "tail"])
def test_the_chain_loop_is_taken_only_where_it_applies(case, monkeypatch):
    make, shape = NETS["omniglot"]
    model = FunctionalModel(make(), cross_entropy_sum)
    oracle = model.batched_loss_and_grad(workers=1)
    kind = FOMAML if case == "fomaml" else Reptile
    policy = "reset" if case == "reset" else "carry"
    algorithm = kind(model, Adam(1e-3), inner_state=policy, batched_loss_and_grad=oracle)
    monkeypatch.setattr(oracle, "chain", lambda *a, **k: pytest.fail("chain taken"))
    phi = model.init_params()
    xs, ys = _chain_inputs(shape, tasks=2)
    tail = (xs[:, 0], ys[:, 0]) if case == "tail" else None
    algorithm.meta_step(phi, xs, ys, algorithm.init_inner_state(phi), tail)
