"""Batched evaluation against a slow, obviously correct per-task evaluator (reference logic)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from reptorch.data.dataset import ImageClassDataset
from reptorch.data.tasks import TaskSampler
from reptorch.evaluation import EvalSpec, Evaluator, task_chunks
from reptorch.functional import FunctionalModel
from reptorch.inner_optim import Adam, AdamState

from .helpers import tiny_convnet

WAYS, SHOTS, TASKS, STEPS, BATCH, LR = 3, 2, 7, 6, 4, 0.01


def _dataset(classes: int = 8, per_class: int = 5) -> ImageClassDataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (classes * per_class, 1, 28, 28), generator=g, dtype=torch.uint8)
    offsets = torch.arange(0, classes * per_class + 1, per_class)
    return ImageClassDataset(images, offsets, tuple(f"c{i}" for i in range(classes)))


def _carried_state(phi) -> AdamState:
    """A non-trivial inner state, like the one carried out of meta-training."""
    g = torch.Generator().manual_seed(2)
    m = {k: 1e-3 * torch.randn(v.shape, generator=g) for k, v in phi.items()}
    v = {k: 1e-4 * torch.rand(v.shape, generator=g) for k, v in phi.items()}
    return AdamState(step=37, exp_avg=m, exp_avg_sq=v)


def _reference(module, phi, state, tasks, indices, transductive):
    """Per task, the reference verbatim: restore all variables (Adam slots included), train on
    the support mini-batches, predict; torch.optim.Adam(betas=(0, 0.999)) on an nn.Module."""
    predictions = []
    for t in range(tasks.support_xs.shape[0]):
        net = copy.deepcopy(module).train()
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(phi[name])
        opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(0.0, 0.999), eps=1e-8, foreach=False)
        for name, p in net.named_parameters():
            opt.state[p] = {
                "step": torch.tensor(float(state.step)),
                "exp_avg": state.exp_avg[name].clone(),
                "exp_avg_sq": state.exp_avg_sq[name].clone(),
            }
        sx, sy, qx = tasks.support_xs[t], tasks.support_ys[t], tasks.query_xs[t]
        for batch in indices[t]:
            opt.zero_grad()
            F.cross_entropy(net(sx[batch]), sy[batch]).backward()
            opt.step()
        with torch.no_grad():
            if transductive:
                predictions.append(net(qx).argmax(-1))
            else:
                row = [net(torch.cat([sx, qx[j : j + 1]]))[-1].argmax() for j in range(len(qx))]
                predictions.append(torch.stack(row))
    return torch.stack(predictions)


@pytest.mark.parametrize("transductive", [False, True])
@pytest.mark.parametrize("use_fast", [False, True])
def test_batched_evaluation_equals_the_reference_loop(transductive, use_fast):
    module = tiny_convnet(WAYS)
    phi = FunctionalModel(module).init_params()
    state = _carried_state(phi)
    spec = EvalSpec(WAYS, SHOTS, STEPS, BATCH, transductive=transductive, queries=2)
    sampler = TaskSampler(_dataset(), WAYS)
    evaluator = Evaluator(module, Adam(LR), spec, use_fast=use_fast)
    seen = 0
    for tasks, indices in task_chunks(sampler, TASKS, spec, seed=3, chunk=3):
        batched, scores = evaluator.run_chunk(phi, state, tasks, indices)
        expected = _reference(module, phi, state, tasks, indices, transductive)
        assert torch.equal(batched, expected)
        assert torch.equal(scores, (expected == tasks.query_ys).double().mean(1))
        seen += len(scores)
    assert seen == TASKS


def test_results_do_not_depend_on_chunks_or_leak_between_tasks():
    module = tiny_convnet(WAYS)
    phi = FunctionalModel(module).init_params()
    state = _carried_state(phi)
    spec = EvalSpec(WAYS, SHOTS, STEPS, BATCH)
    sampler = TaskSampler(_dataset(), WAYS)
    evaluator = Evaluator(module, Adam(LR), spec)
    runs = [
        evaluator.evaluate(phi, state, task_chunks(sampler, 9, spec, 5, chunk), 9, progress=False)
        for chunk in (1, 4, 9, 4)
    ]
    for run in runs[1:]:
        torch.testing.assert_close(run.scores, runs[0].scores, rtol=0, atol=0)
    assert runs[0].scores.shape == (9,)
    assert state.step == 37  # the saved state is only read
    other_seed = task_chunks(sampler, 9, spec, 6, 9)
    assert not torch.equal(
        next(other_seed)[0].support_xs, next(task_chunks(sampler, 9, spec, 5, 9))[0].support_xs
    )


def test_summary_reports_ci_and_settings():
    module = tiny_convnet(WAYS)
    phi = FunctionalModel(module).init_params()
    spec = EvalSpec(WAYS, SHOTS, 2, BATCH, transductive=True)
    sampler = TaskSampler(_dataset(), WAYS)
    evaluator = Evaluator(module, Adam(LR), spec)
    result = evaluator.evaluate(
        phi, Adam(LR).init(phi), task_chunks(sampler, 5, spec, 0, 5), 5, progress=False
    )
    summary = result.summary(spec, "test", 0)
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["ci95"] >= 0
    assert summary["tasks"] == 5 and summary["ways"] == WAYS and summary["transductive"] is True
