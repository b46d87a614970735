"""The fast conv-net oracle (reptorch.fast) against the vmapped autograd reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from reptorch.fast import (
    ConvNetOracle,
    fast_logits_for,
    fast_loss_and_grad_for,
    spec_for,
)
from reptorch.models import MiniImageNetNet, OmniglotNet, SineMLP


def _reference(net: torch.nn.Module):
    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    return vmap(grad_and_value(loss))


def _batched_params(net: torch.nn.Module, tasks: int, dtype: torch.dtype, gen: torch.Generator):
    """Distinct parameters per task (phi plus noise), so per-task indexing errors show."""
    return {
        name: (p.detach().unsqueeze(0) + 0.1 * torch.randn(tasks, *p.shape, generator=gen)).to(
            dtype
        )
        for name, p in net.named_parameters()
    }


def _inputs(tasks, ways, per_class, shape, dtype, gen):
    x = torch.rand(tasks, ways * per_class, *shape, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.arange(ways).repeat_interleave(per_class).repeat(tasks, 1)
    return x, y[:, torch.randperm(ways * per_class, generator=gen)].contiguous()


CASES = [
    # (net factory, input shape, tasks, ways, examples per class)
    (lambda n: OmniglotNet(n), (1, 28, 28), 5, 5, 2),
    (lambda n: OmniglotNet(n), (1, 28, 28), 3, 5, 1),
    (lambda n: OmniglotNet(n), (1, 28, 28), 2, 20, 1),
    (lambda n: OmniglotNet(n, filters=24), (1, 28, 28), 4, 3, 2),
    (lambda n: OmniglotNet(n), (1, 28, 28), 1, 5, 1),
    (lambda n: MiniImageNetNet(n), (3, 84, 84), 2, 5, 1),
    (lambda n: MiniImageNetNet(n, filters=8), (3, 84, 84), 3, 5, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("workers", [1, 2])
def test_loss_and_grad_matches_vmap_reference(case: int, dtype: torch.dtype, workers: int):
    make, shape, tasks, ways, per_class = CASES[case]
    gen = torch.Generator().manual_seed(case)
    torch.manual_seed(case)
    net = make(ways).to(dtype)
    params = _batched_params(net, tasks, dtype, gen)
    x, y = _inputs(tasks, ways, per_class, shape, dtype, gen)
    ref_grads, ref_loss = _reference(net)(params, x, y)
    oracle = fast_loss_and_grad_for(net, workers=workers)
    assert oracle is not None
    loss, grads = oracle(params, x, y)
    tol = dict(rtol=1e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    assert loss.shape == (tasks,) and loss.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, **tol)
    assert grads.keys() == params.keys()
    for name in params:
        assert grads[name].shape == params[name].shape, name
        # Conv biases: exactly zero here, rounding noise (~1e-9 in float32) in the reference.
        torch.testing.assert_close(grads[name], ref_grads[name], **tol, msg=name)


def test_accepts_expanded_params():
    """adapt_batched starts every task from phi as a stride-0 expanded view."""
    net = OmniglotNet(5)
    phi = {k: v.detach() for k, v in net.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    x, y = _inputs(3, 5, 2, (1, 28, 28), torch.float32, gen)
    expanded = {k: v.expand(3, *v.shape) for k, v in phi.items()}
    contiguous = {k: v.contiguous() for k, v in expanded.items()}
    oracle = ConvNetOracle(spec_for(net), workers=2)
    loss_a, grads_a = oracle(expanded, x, y)
    loss_b, grads_b = oracle(contiguous, x, y)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    for name in phi:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0)


@pytest.mark.parametrize("case", [0, 2, 5])
@pytest.mark.parametrize("workers", [1, 2])
def test_logits_match_module(case: int, workers: int):
    make, shape, tasks, ways, per_class = CASES[case]
    gen = torch.Generator().manual_seed(10 + case)
    net = make(ways)
    params = _batched_params(net, tasks, torch.float32, gen)
    x, _ = _inputs(tasks, ways, per_class, shape, torch.float32, gen)
    forward = fast_logits_for(net, workers=workers)
    assert forward is not None
    out = forward(params, x)
    for t in range(tasks):
        single = {k: v[t] for k, v in params.items()}
        expected = functional_call(net, single, (x[t],))
        torch.testing.assert_close(out[t], expected, rtol=1e-4, atol=1e-5)


def test_other_modules_get_no_fast_oracle():
    assert fast_loss_and_grad_for(SineMLP()) is None
    assert fast_logits_for(SineMLP()) is None

    class Custom(OmniglotNet):
        def forward(self, x):
            return super().forward(x) * 2

    assert fast_loss_and_grad_for(Custom(5)) is None
    assert fast_loss_and_grad_for(OmniglotNet(7, filters=16)) is not None
