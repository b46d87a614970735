"""adapt: the functional inner loop against nn.Module + torch.optim, and vmapped against a loop."""

import pytest
import torch
import torch.nn.functional as F

from reptorch import tree
from reptorch.adapt import AdaptResult, adapt
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import SGD, Adam

from .helpers import image_tasks, tiny_convnet


def test_adapt_equals_module_with_torch_adam():
    """k functional Adam steps == the same steps on the nn.Module with torch.optim.Adam."""
    module = tiny_convnet()
    model = FunctionalModel(module)
    phi = model.init_params()
    xs, ys = image_tasks(1, 4, 6)
    inner = Adam(1e-2)
    result = adapt(model.loss_and_grad, phi, zip(xs[0], ys[0]), inner, inner.init(phi))

    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2, betas=(0.0, 0.999), foreach=False)
    expected_losses = []
    for x, y in zip(xs[0], ys[0]):
        optimizer.zero_grad()
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        optimizer.step()
        expected_losses.append(loss.item())
    for name, value in module.named_parameters():
        torch.testing.assert_close(result.params[name], value.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.losses, torch.tensor(expected_losses), rtol=1e-5, atol=1e-6)
    assert result.state.step == 4


@pytest.mark.parametrize("inner", [SGD(0.05), Adam(1e-2)], ids=["sgd", "adam"])
def test_adapt_on_a_batch_of_tasks_equals_a_loop_over_them(inner):
    model = FunctionalModel(tiny_convnet())
    phi = model.init_params()
    xs, ys = image_tasks(3, 5, 6)
    batches = zip(xs.transpose(0, 1), ys.transpose(0, 1))  # k mini-batches of the 3 tasks
    oracle = model.batched_loss_and_grad()
    batched = adapt(oracle, tree.expand(phi, 3), batches, inner, inner.init(phi))
    assert batched.losses.shape == (3, 5)  # (T, k): task-major, as at every boundary
    for t in range(3):
        single = adapt(model.loss_and_grad, phi, zip(xs[t], ys[t]), inner, inner.init(phi))
        for name in phi:
            if isinstance(inner, Adam) and name.endswith("conv.bias"):
                # A bias followed by BatchNorm has a gradient of exactly zero in exact arithmetic;
                # Adam normalises the ~1e-8 round-off to steps of size lr, so it is noise.
                continue
            torch.testing.assert_close(
                batched.params[name][t], single.params[name], rtol=1e-4, atol=1e-6
            )
        torch.testing.assert_close(batched.losses[t], single.losses, rtol=1e-5, atol=1e-6)


def test_first_order_adapt_keeps_no_graph():
    model = FunctionalModel(tiny_convnet())
    phi = {k: v.requires_grad_() for k, v in model.init_params().items()}
    xs, ys = image_tasks(1, 3, 4)
    result = adapt(model.loss_and_grad, phi, zip(xs[0], ys[0]), SGD(0.1), SGD(0.1).init(phi))
    assert all(v.grad_fn is None and not v.requires_grad for v in result.params.values())
    assert result.losses.grad_fn is None


def test_weight_decay_scales_weights_before_each_step():
    """The reference's --weight-decay rate r: theta <- r * theta, then the optimiser step."""
    model = FunctionalModel(tiny_convnet())
    phi = model.init_params()
    xs, ys = image_tasks(1, 1, 4)
    inner = SGD(0.1)
    state = inner.init(phi)
    decayed = adapt(model.loss_and_grad, phi, zip(xs[0], ys[0]), inner, state, weight_decay=0.5)
    scaled = tree.scale(phi, 0.5)
    plain = adapt(model.loss_and_grad, scaled, zip(xs[0], ys[0]), inner, inner.init(phi))
    for name in phi:
        torch.testing.assert_close(decayed.params[name], plain.params[name])


def _setup():
    model = FunctionalModel(tiny_convnet())
    xs, ys = image_tasks(1, 3, 6)
    return model, model.init_params(), xs, ys


class _OwnLoopOracle:
    """An oracle with its own inner loop that records calls and may decline (returns None)."""

    def __init__(self, oracle, result=None) -> None:
        self.oracle, self.result, self.calls = oracle, result, 0

    def __call__(self, params, x, y):
        return self.oracle(params, x, y)

    def adapt(self, params, batches, optimizer, state, *, weight_decay=1.0):
        self.calls += 1
        return self.result


def test_adapt_hands_the_loop_to_an_oracle_that_has_one():
    model, phi, xs, ys = _setup()
    inner = SGD(0.1)
    sentinel = AdaptResult(phi, inner.init(phi), torch.zeros(3))
    oracle = _OwnLoopOracle(model.loss_and_grad, sentinel)
    assert adapt(oracle, phi, zip(xs[0], ys[0]), inner, inner.init(phi)) is sentinel
    assert oracle.calls == 1
    # Second order needs the differentiable generic loop: the oracle's own loop is not used.
    adapt(oracle, phi, zip(xs[0], ys[0]), inner, inner.init(phi), differentiable=True)
    assert oracle.calls == 1


def test_adapt_falls_back_when_the_oracle_declines():
    model, phi, xs, ys = _setup()
    inner = SGD(0.1)
    declining = _OwnLoopOracle(model.loss_and_grad, None)
    got = adapt(declining, phi, zip(xs[0], ys[0]), inner, inner.init(phi))
    ref = adapt(model.loss_and_grad, phi, zip(xs[0], ys[0]), inner, inner.init(phi))
    assert declining.calls == 1
    for name in phi:
        torch.testing.assert_close(got.params[name], ref.params[name], rtol=0, atol=0)
    torch.testing.assert_close(got.losses, ref.losses, rtol=0, atol=0)
