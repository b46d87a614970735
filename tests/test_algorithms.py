"""Reptile, FOMAML, MAML and joint training against hand-derived and independent references."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reptorch import tree
from reptorch.algorithms import FOMAML, MAML, JointTraining, Reptile
from reptorch.errors import ConfigError
from reptorch.fast import ConvNetOracle
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import SGD, Adam
from reptorch.losses import loss_for
from reptorch.meta import MetaLearner
from reptorch.outer import Interpolation, OuterOptimizer

from .helpers import image_tasks, mlp, tiny_convnet, vector_tasks


def _assert_trees_close(a, b, skip_conv_bias=False, **tolerance):
    """skip_conv_bias: a conv bias followed by BatchNorm has an exactly-zero gradient up to
    round-off, which Adam normalises into lr-sized steps: under Adam those leaves are noise."""
    assert a.keys() == b.keys()
    for name in a:
        if not (skip_conv_bias and name.endswith("conv.bias")):
            torch.testing.assert_close(a[name], b[name], **tolerance)


def test_reptile_step_by_hand():
    """y = w . x, squared error, SGD lr 0.1, k = 2, eps = 0.5, derived on paper:
    w0 = (1, -1); batch 1 x = (1, 2), y = 3: residual -4, g = (-8, -16), W1 = (1.8, 0.6);
    batch 2 x = (0, 1), y = 1: residual -0.4, g = (0, -0.8), W2 = (1.8, 0.68);
    phi' = phi + 0.5 (W2 - phi) = (1.4, -0.16)."""
    linear = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -1.0]]))
    model = FunctionalModel(linear, loss_fn=lambda out, y: F.mse_loss(out, y))
    xs = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # (T=1, k=2, B=1, 2)
    ys = torch.tensor([[[[3.0]], [[1.0]]]])
    for parallel in ("vmap", "loop"):
        learner = MetaLearner(
            Reptile(model, SGD(0.1), parallel=parallel),
            Interpolation(0.5, 0.5, 10),
            model.init_params(),
        )
        learner.step(xs, ys)
        torch.testing.assert_close(learner.phi["weight"], torch.tensor([[1.4, -0.16]]))


def test_reptile_with_one_step_is_a_joint_training_sgd_step():
    """k = 1: phi' = phi - eps alpha mean_i grad L_i(phi), i.e. torch.optim.SGD at lr eps*alpha
    on the mean of the task losses."""
    module = mlp()
    model = FunctionalModel(module)
    xs, ys = vector_tasks(4, 1, 5)
    eps, alpha = 0.7, 0.1
    learner = MetaLearner(
        JointTraining(model, SGD(alpha)), Interpolation(eps, eps, 10), model.init_params()
    )
    learner.step(xs, ys)
    optimizer = torch.optim.SGD(module.parameters(), lr=eps * alpha)
    loss = torch.stack([F.cross_entropy(module(xs[i, 0]), ys[i, 0]) for i in range(4)]).mean()
    loss.backward()
    optimizer.step()
    _assert_trees_close(learner.phi, dict(module.named_parameters()), rtol=1e-6, atol=1e-7)


def test_joint_training_refuses_several_inner_steps():
    model = FunctionalModel(mlp())
    xs, ys = vector_tasks(2, 3, 5)
    with pytest.raises(ConfigError, match="--inner-iters 1"):
        JointTraining(model, SGD(0.1)).meta_step(model.init_params(), xs, ys, None)


def test_batched_reptile_with_meta_batch_one_equals_serial():
    """Serial Reptile (one task per update, Algorithm 1) == batched Reptile with n = 1."""
    model = FunctionalModel(tiny_convnet())
    xs, ys = image_tasks(6, 3, 6)
    serial = MetaLearner(
        Reptile(model, Adam(1e-2), parallel="loop"), Interpolation(1.0, 0.0, 6), model.init_params()
    )
    batched = MetaLearner(
        Reptile(model, Adam(1e-2), parallel="vmap"), Interpolation(1.0, 0.0, 6), model.init_params()
    )
    for i in range(6):
        serial.step(xs[i : i + 1], ys[i : i + 1])
        batched.step(xs[i : i + 1], ys[i : i + 1])
    _assert_trees_close(serial.phi, batched.phi, skip_conv_bias=True, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "reduction, workers", [("mean", None), ("sum", 1), ("sum", 2), ("sum", None)]
)
def test_carry_policy_equals_reference_loop_with_one_adam_state(reduction, workers):
    """The reference: one nn.Module and one Adam optimiser; between tasks only the weights are
    restored, so Adam's moments and step count run on through tasks and meta-iterations.
    `parallel='loop'` (the exact semantics) runs each task through the fast oracle as a batch of
    one; with 2 workers the task's images are split between them (BatchNorm sums all-reduced)."""
    module = tiny_convnet(seed=3)
    model = FunctionalModel(module, loss_for(reduction))
    oracle = model.batched_loss_and_grad(workers=workers)
    assert isinstance(oracle, ConvNetOracle)
    learner = MetaLearner(
        Reptile(model, Adam(5e-3), parallel="loop", batched_loss_and_grad=oracle),
        Interpolation(1.0, 0.0, 2),
        model.init_params(),
    )
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-3, betas=(0.0, 0.999), foreach=False)
    for iteration in range(2):
        xs, ys = image_tasks(3, 4, 6, seed=10 + iteration)
        learner.step(xs, ys)
        old = {k: v.detach().clone() for k, v in module.named_parameters()}
        adapted = []
        for t in range(3):
            for x, y in zip(xs[t], ys[t]):
                optimizer.zero_grad()
                F.cross_entropy(module(x), y, reduction=reduction).backward()
                optimizer.step()
            adapted.append({k: v.detach().clone() for k, v in module.named_parameters()})
            with torch.no_grad():
                for k, v in module.named_parameters():
                    v.copy_(old[k])
        eps = 1.0 - iteration / 2
        new = tree.lerp(old, tree.mean(adapted), eps)
        with torch.no_grad():
            for k, v in module.named_parameters():
                v.copy_(new[k])
    assert learner.inner_state.step == 2 * 3 * 4
    reference = {k: v.detach() for k, v in module.named_parameters()}
    _assert_trees_close(learner.phi, reference, skip_conv_bias=True, rtol=1e-4, atol=2e-5)
    for name, exp_avg_sq in learner.inner_state.exp_avg_sq.items():
        reference = optimizer.state[dict(module.named_parameters())[name]]["exp_avg_sq"]
        if not name.endswith("conv.bias"):
            torch.testing.assert_close(exp_avg_sq, reference, rtol=1e-3, atol=1e-9)


def test_vmap_carry_merges_task_states_by_their_mean():
    model = FunctionalModel(mlp())
    phi = model.init_params()
    xs, ys = vector_tasks(3, 2, 4)
    inner = Adam(1e-2)
    result = Reptile(model, inner, parallel="vmap").meta_step(phi, xs, ys, inner.init(phi))
    finals = [
        Reptile(model, inner, parallel="loop").meta_step(
            phi, xs[t : t + 1], ys[t : t + 1], inner.init(phi)
        )
        for t in range(3)
    ]
    expected = tree.mean([f.inner_state.exp_avg_sq for f in finals])
    _assert_trees_close(result.inner_state.exp_avg_sq, expected, rtol=1e-5, atol=1e-10)
    _assert_trees_close(
        result.direction, tree.mean([f.direction for f in finals]), rtol=1e-5, atol=1e-7
    )
    assert result.inner_state.step == 2


def test_reset_policy_starts_every_task_fresh():
    model = FunctionalModel(mlp())
    phi = model.init_params()
    xs, ys = vector_tasks(3, 2, 4)
    inner = Adam(1e-2)
    carried = inner.init(phi)._replace(step=50, exp_avg_sq=tree.scale(tree.zeros_like(phi), 0))
    carried = carried._replace(exp_avg_sq={k: torch.full_like(v, 9.0) for k, v in phi.items()})
    for parallel in ("vmap", "loop"):
        algorithm = Reptile(model, inner, parallel=parallel, inner_state="reset")
        result = algorithm.meta_step(phi, xs, ys, carried)
        fresh = Reptile(model, inner, parallel="loop", inner_state="carry")
        per_task = [
            fresh.meta_step(phi, xs[t : t + 1], ys[t : t + 1], inner.init(phi)) for t in range(3)
        ]
        expected = tree.mean([r.direction for r in per_task])
        _assert_trees_close(result.direction, expected, rtol=1e-5, atol=1e-7)
        assert result.inner_state is carried  # the carried state is left untouched


def test_interpolation_equals_outer_sgd_at_lr_eps():
    model = FunctionalModel(tiny_convnet())
    phi = model.init_params()
    interpolation = Interpolation(1.0, 0.2, 4)
    outer_sgd = OuterOptimizer("sgd", phi, 1.0, 0.2, 4)
    a, b = phi, phi
    for i in range(4):
        xs, ys = image_tasks(2, 3, 6, seed=i)
        step_a = Reptile(model, SGD(0.05)).meta_step(a, xs, ys, SGD(0.05).init(a))
        step_b = Reptile(model, SGD(0.05)).meta_step(b, xs, ys, SGD(0.05).init(b))
        a = interpolation.update(a, step_a.direction, i)
        b = outer_sgd.update(b, step_b.direction, i)
    _assert_trees_close(a, b, rtol=1e-6, atol=1e-7)
    adam = OuterOptimizer("adam", phi, 1e-3, 1e-3, 4)
    moved = adam.update(phi, step_a.direction, 0)
    assert all(not torch.equal(moved[k], phi[k]) for k in ("classifier.weight",))


def test_fomaml_direction_is_the_last_step():
    """SGD: D = W_k - W_{k-1} = -alpha * grad L_{B_k}(W_{k-1}); shared and separate tail."""
    module = mlp(dtype=torch.float64)
    model = FunctionalModel(module)
    phi = model.init_params()
    xs, ys = vector_tasks(1, 3, 4, dtype=torch.float64)
    tail = (torch.randn(1, 6, 3, dtype=torch.float64), torch.randint(0, 2, (1, 6)))
    alpha = 0.1
    for with_tail in (False, True):
        result = FOMAML(model, SGD(alpha)).meta_step(
            phi, xs, ys, SGD(alpha).init(phi), tail if with_tail else None
        )
        pre = (xs[0], ys[0]) if with_tail else (xs[0, :-1], ys[0, :-1])
        last = (tail[0][0], tail[1][0]) if with_tail else (xs[0, -1], ys[0, -1])
        w = {k: v.clone() for k, v in phi.items()}
        for x, y in zip(*pre):
            _, g = model.loss_and_grad(w, x, y)
            w = {k: w[k] - alpha * g[k] for k in w}
        _, g_last = model.loss_and_grad(w, *last)
        expected = {k: -alpha * g_last[k] for k in w}
        _assert_trees_close(result.direction, expected, rtol=1e-10, atol=1e-12)
        assert result.losses.shape == (1, 4 if with_tail else 3)


def test_maml_meta_gradient_matches_central_finite_differences():
    torch.manual_seed(0)
    model = FunctionalModel(mlp(dtype=torch.float64))
    phi = model.init_params()
    xs, ys = vector_tasks(1, 3, 4, dtype=torch.float64)
    algorithm = MAML(model, SGD(0.3))

    def objective(params):
        w = params
        for x, y in zip(xs[0, :-1], ys[0, :-1]):
            _, g = model.loss_and_grad(w, x, y)
            w = {k: w[k] - 0.3 * g[k] for k in w}
        return model.loss(w, xs[0, -1], ys[0, -1]).item()

    grads, _ = algorithm.meta_gradient(phi, xs[0, :-1], ys[0, :-1], xs[0, -1], ys[0, -1])
    h = 1e-6
    for name, value in phi.items():
        flat = value.flatten()
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            plus = {k: v.clone() for k, v in phi.items()}
            minus = {k: v.clone() for k, v in phi.items()}
            plus[name].view(-1)[i] += h
            minus[name].view(-1)[i] -= h
            numeric = (objective(plus) - objective(minus)) / (2 * h)
            assert grads[name].flatten()[i].item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    # The second-order term matters: the first-order (FOMAML) gradient differs.
    first_order = FOMAML(model, SGD(0.3)).meta_step(phi, xs, ys, SGD(0.3).init(phi)).direction
    diff = max((first_order[k] / -0.3 - grads[k]).abs().max().item() for k in grads)
    assert diff > 1e-4


def test_maml_vmap_equals_loop():
    model = FunctionalModel(mlp(dtype=torch.float64))
    phi = model.init_params()
    xs, ys = vector_tasks(3, 3, 4, dtype=torch.float64)
    vmapped = MAML(model, SGD(0.1), parallel="vmap").meta_step(phi, xs, ys, None)
    looped = MAML(model, SGD(0.1), parallel="loop").meta_step(phi, xs, ys, None)
    _assert_trees_close(vmapped.direction, looped.direction, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vmapped.losses, looped.losses)
