"""Functional SGD and Adam against torch.optim, step for step, over a grid of settings."""

import itertools

import pytest
import torch

from reptorch.errors import ConfigError
from reptorch.inner_optim import SGD, Adam, AdamState, make_inner_optimizer, merge_task_states


def _run_both(functional, reference_factory, steps=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    leaves = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    reference = reference_factory(list(leaves.values()))
    state = functional.init(params)
    for _ in range(steps):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        for k, leaf in leaves.items():
            leaf.grad = grads[k].clone()
        reference.step()
        params, state = functional.step(params, grads, state)
    return params, {k: v.detach() for k, v in leaves.items()}, state


@pytest.mark.parametrize(
    "lr,beta1,beta2,eps",
    list(itertools.product([1e-3, 0.05], [0.0, 0.9], [0.999, 0.9], [1e-8, 1e-4])),
)
def test_adam_equals_torch_adam(lr, beta1, beta2, eps):
    ours, theirs, state = _run_both(
        Adam(lr, beta1, beta2, eps),
        lambda p: torch.optim.Adam(p, lr=lr, betas=(beta1, beta2), eps=eps, foreach=False),
    )
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-7)
    assert state.step == 25


def test_adam_defaults_are_the_reference():
    adam = Adam(1e-3)
    assert (adam.beta1, adam.beta2, adam.eps) == (0.0, 0.999, 1e-8)


@pytest.mark.parametrize("lr", [1e-3, 0.1, 1.0])
def test_sgd_equals_torch_sgd(lr):
    ours, theirs, _ = _run_both(SGD(lr), lambda p: torch.optim.SGD(p, lr=lr, foreach=False))
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)


def test_adam_step_broadcasts_over_tasks():
    """A batched step (leading task dim) equals per-task steps from the same shared state."""
    adam = Adam(0.01)
    g = torch.Generator().manual_seed(1)
    shared = AdamState(3, {"w": torch.rand(5, generator=g)}, {"w": torch.rand(5, generator=g)})
    params = {"w": torch.randn(4, 5, generator=g)}
    grads = {"w": torch.randn(4, 5, generator=g)}
    batched, state = adam.step(params, grads, shared)
    for t in range(4):
        single, _ = adam.step({"w": params["w"][t]}, {"w": grads["w"][t]}, shared)
        torch.testing.assert_close(batched["w"][t], single["w"], rtol=0, atol=0)
    merged = merge_task_states(state)
    torch.testing.assert_close(merged.exp_avg_sq["w"], state.exp_avg_sq["w"].mean(0))
    assert merged.step == 4


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="learning rate"):
        Adam(0.0)
    with pytest.raises(ConfigError, match="betas"):
        Adam(1e-3, beta2=1.0)
    with pytest.raises(ConfigError, match="choose one of adam, sgd"):
        make_inner_optimizer("rmsprop", 0.1)
