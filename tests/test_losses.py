"""The inner loss's reduction: the reference's per-example sum, against hand computations."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value

from reptorch.config import TrainConfig, resolve
from reptorch.errors import ConfigError
from reptorch.fast import ConvNetOracle
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import SGD
from reptorch.losses import cross_entropy_mean, cross_entropy_sum, loss_for
from reptorch.run.setup import build_module

from .helpers import image_tasks, tiny_convnet


def _by_hand(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_b -log softmax(l_b)[y_b], written out example by example."""
    total = logits.new_zeros(())
    for row, label in zip(logits, y):
        total = total + (torch.log(torch.exp(row).sum()) - row[label])
    return total


def test_summed_cross_entropy_is_the_per_example_sum():
    logits = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    torch.testing.assert_close(cross_entropy_sum(logits, y), _by_hand(logits, y))
    torch.testing.assert_close(cross_entropy_mean(logits, y), _by_hand(logits, y) / 7)


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_oracle_sum_equals_autograd_of_the_hand_sum(workers):
    """Fast conv-net oracle with reduction='sum' vs autograd of the per-example hand sum (and
    exactly B times its mean version), on 3 tasks each with its own params and BN statistics."""
    module = tiny_convnet(ways=5, filters=8, seed=1)
    model = FunctionalModel(module, cross_entropy_sum)
    oracle = model.batched_loss_and_grad(workers=workers)
    assert isinstance(oracle, ConvNetOracle) and oracle.reduction == "sum"
    phi = model.init_params()
    params = {k: v.expand(3, *v.shape).clone() for k, v in phi.items()}
    xs, ys = image_tasks(3, 1, 10, ways=5, seed=4)
    x, y = xs[:, 0], ys[:, 0]
    loss, grads = oracle(params, x, y)

    def hand(p, xb, yb):
        return _by_hand(functional_call(module, p, (xb,)), yb)

    per_task = [
        grad_and_value(hand)({k: v[t] for k, v in params.items()}, x[t], y[t]) for t in range(3)
    ]
    ref_loss = torch.stack([loss_t for _, loss_t in per_task])
    ref_grads = {k: torch.stack([g[k] for g, _ in per_task]) for k in params}
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name in grads:
        if not name.endswith("conv.bias"):  # exactly zero by hand, round-off under autograd
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5)
    mean_loss, mean_grads = FunctionalModel(module, F.cross_entropy).batched_loss_and_grad(
        workers=workers
    )(params, x, y)
    torch.testing.assert_close(loss, 10 * mean_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads["classifier.weight"], 10 * mean_grads["classifier.weight"])


def test_sgd_step_on_the_sum_is_batch_times_the_mean_step():
    """Why the figure needs the sum: lr 0.003 on a summed batch of 25 = lr 0.075 on the mean."""
    module = tiny_convnet(ways=5, filters=4, seed=2)
    phi = FunctionalModel(module).init_params()
    xs, ys = image_tasks(1, 1, 25, ways=5, seed=5)
    x, y = xs[0, 0], ys[0, 0]
    g_sum = FunctionalModel(module, cross_entropy_sum).loss_and_grad(phi, x, y)[1]
    g_mean = FunctionalModel(module, cross_entropy_mean).loss_and_grad(phi, x, y)[1]
    step_sum = SGD(0.003).step(phi, g_sum, SGD(0.003).init(phi))[0]
    step_mean = SGD(0.075).step(phi, g_mean, SGD(0.075).init(phi))[0]
    for name in phi:
        torch.testing.assert_close(step_sum[name], step_mean[name], rtol=1e-5, atol=1e-6)


def test_config_resolves_the_reference_reduction_and_records_it():
    assert resolve("omniglot-5w1s").loss_reduction == "sum"
    assert TrainConfig(dataset="sine").loss_reduction == "mean"
    assert resolve("omniglot-5w1s", loss_reduction="mean").to_dict()["loss_reduction"] == "mean"
    # a config.json written before the field existed was trained with the mean
    saved = {k: v for k, v in resolve("omniglot-5w1s").to_dict().items() if k != "loss_reduction"}
    assert TrainConfig.from_saved(saved).loss_reduction == "mean"
    assert TrainConfig.from_saved(resolve("omniglot-5w1s").to_dict()).loss_reduction == "sum"
    with pytest.raises(ConfigError, match="loss_reduction='median'"):
        resolve("omniglot-5w1s", loss_reduction="median")


def test_training_builds_the_configured_loss():
    class _Source:  # just what build_module reads
        class dataset:
            image_shape = (1, 28, 28)

    sources = {"train": _Source()}
    assert build_module(resolve("omniglot-5w1s"), sources)[1] is cross_entropy_sum
    mean = resolve("omniglot-5w1s", loss_reduction="mean")
    assert build_module(mean, sources)[1] is loss_for("mean")
