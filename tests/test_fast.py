"""The fast conv-net oracle (reptorch.fast) against the vmapped autograd reference."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from reptorch.fast import (
    ConvNetOracle,
    ConvNetSpec,
    fast_logits_for,
    fast_loss_and_grad_for,
    spec_for,
)
from reptorch.fast import logits as convnet_logits
from reptorch.fast import loss_and_grad as convnet_loss_and_grad
from reptorch.models import FourBlockNet, MiniImageNetNet, OmniglotNet, SineMLP


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


PLANS = {  # (workers, forced plan, threads running the image slices)
    "one worker": (1, None, None),
    "images": (2, ("images", 2), 2),
    "images on one thread": (2, ("images", 2), 1),
    "tasks": (2, ("tasks", 1), None),
}


def _small_miniimagenet() -> FourBlockNet:
    """Mini-ImageNet's network (stride-1 convs, pooling) at 8 filters, for 21x21 or 30x30 inputs
    (4 'same' pools: 21 -> 11 -> 6 -> 3 -> 2, 30 -> 15 -> 8 -> 4 -> 2)."""
    return FourBlockNet(5, filters=8, in_channels=3, stride=1, pool=True, side=2)


NETS = {  # the inner loop on each kernel: im2col (Omniglot), PyTorch's convolutions (Mini-ImageNet)
    # with the blocks' BatchNorm / ReLU / pool passes on ATen's ops or fused (`reptorch.fast.fused`)
    "omniglot": (lambda: OmniglotNet(5), (1, 28, 28), "aten"),
    "omniglot fused": (lambda: OmniglotNet(5), (1, 28, 28), "fused"),
    "miniimagenet": (lambda: _small_miniimagenet(), (3, 21, 21), "aten"),
    "miniimagenet fused": (lambda: _small_miniimagenet(), (3, 21, 21), "fused"),
}


@contextmanager
def kernels(name: str):
    """The process's block passes are `name` inside (`reptorch.fast.fused.select`)."""
    from reptorch.fast import fused

    if name == "fused" and not fused.available():
        if os.environ.get("CI") == "true":
            pytest.fail("the fused native ops did not build")
        pytest.skip("no compiler for the fused native ops")
    before = fused.selected()
    fused.select(name)
    try:
        yield
    finally:
        fused.select(before)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("net", NETS)
def test_fast_inner_loop_matches_core_adapt(
    plan: str, optimizer: str, net: str, meetings: str, monkeypatch
):
    """`ConvNetOracle.adapt` (flat buffers, in-place Adam) equals `reptorch.adapt.adapt` run with
    the vmap reference oracle: params, Adam moments, step counter and losses."""
    from reptorch import tree
    from reptorch.adapt import adapt
    from reptorch.functional import FunctionalModel
    from reptorch.inner_optim import SGD, Adam

    # float64: in float32 a ReLU input within rounding of 0 can flip between two summation
    # orders (seen on an Intel CPU: one channel of one task, 3e-4 after 4 SGD steps).
    torch.manual_seed(3)
    make, shape, passes = NETS[net]
    model = FunctionalModel(make().double())
    phi = model.init_params()
    gen = torch.Generator().manual_seed(3)
    tasks, steps = 3, 4
    batches = [_inputs(tasks, 5, 2, shape, torch.float64, gen) for _ in range(steps)]
    opt = Adam(1e-3) if optimizer == "adam" else SGD(0.05)
    state = opt.init(phi)
    if optimizer == "adam":  # a carried state: no task dim, nonzero moments, step > 0
        state = state._replace(
            step=9, exp_avg_sq=tree.tree_map(lambda v: v + 1e-6, state.exp_avg_sq)
        )
    # distinct starting points per task, so each work item must fill its own rows
    noise = {
        k: 1e-2 * torch.randn(tasks, *v.shape, generator=gen, dtype=v.dtype) for k, v in phi.items()
    }
    params = tree.add(tree.expand(phi, tasks), noise)
    ref = adapt(model.vmap_loss_and_grad(), params, batches, opt, state, weight_decay=0.999)
    workers, forced, threads = PLANS[plan]
    with kernels(passes):
        oracle = fast_loss_and_grad_for(model.module, workers=workers)
    assert oracle.spec.fused == (passes == "fused")
    if forced is not None:  # whole tasks (one per work item) or every task's images split
        monkeypatch.setattr(oracle, "plan", lambda tasks, batch, workers: forced)
    if threads is not None:  # the slices on one worker each, or all on one
        oracle.threads = lambda slices: threads
    new = oracle.adapt(params, batches, opt, state, weight_decay=0.999)
    tol = dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(new.losses, ref.losses, **tol)
    assert new.state.step == ref.state.step
    for name in phi:
        torch.testing.assert_close(new.params[name], ref.params[name], **tol, msg=name)
        if optimizer == "adam":
            # Conv-bias moments differ: exact-zero vs ~1e-9 rounding gradients, so skip them.
            if name.endswith("conv.bias"):
                continue
            torch.testing.assert_close(new.state.exp_avg[name], ref.state.exp_avg[name], **tol)
            torch.testing.assert_close(
                new.state.exp_avg_sq[name], ref.state.exp_avg_sq[name], rtol=1e-6, atol=1e-20
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("slices", [2, 3])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("net", NETS)
def test_the_threads_running_the_slices_never_change_a_bit(
    net: str, optimizer: str, slices: int, dtype: torch.dtype, meetings: str
):
    """A step's images cut into S slices: S workers (one slice each, meeting to sum) and one
    worker taking them in turn give bitwise the same params, moments and losses, so the thread
    count may follow the free cores; S itself changes only rounding (vs 1 slice)."""
    from reptorch import tree
    from reptorch.functional import FunctionalModel
    from reptorch.inner_optim import SGD, Adam

    torch.manual_seed(5)
    make, shape, passes = NETS[net]
    model = FunctionalModel(make().to(dtype))
    phi = model.init_params()
    gen = torch.Generator().manual_seed(5)
    batches = [_inputs(1, 5, 2, shape, dtype, gen) for _ in range(3)]
    opt = Adam(1e-3) if optimizer == "adam" else SGD(0.05)
    runs = {}
    for workers, threads in ((1, 1), (slices, slices), (slices, 1)):
        with kernels(passes):
            oracle = fast_loss_and_grad_for(model.module, workers=workers, reduction="sum")
        oracle.threads = lambda s, threads=threads: threads
        runs[workers, threads] = oracle.adapt(
            tree.expand(phi, 1), batches, opt, opt.init(phi), weight_decay=0.99
        )
        assert oracle.last_threads == (threads if workers > 1 else 0)
    split, alone, whole = runs[slices, slices], runs[slices, 1], runs[1, 1]
    assert torch.equal(split.losses, alone.losses)
    tol = dict(rtol=1e-3, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for name in phi:
        assert torch.equal(split.params[name], alone.params[name]), name
        # float32 Adam: rounding-level gradient differences can be ~1% of an early step
        torch.testing.assert_close(split.params[name], whole.params[name], **tol)
        if optimizer == "adam":
            for moment in ("exp_avg", "exp_avg_sq"):
                a, b = getattr(split.state, moment)[name], getattr(alone.state, moment)[name]
                assert torch.equal(a, b), (moment, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tasks", [1, 3])
def test_native_convolutions_match_im2col_and_autograd(dtype: torch.dtype, tasks: int):
    """Mini-ImageNet's convs on PyTorch's kernels (the default there) and on im2col + GEMM give
    the autograd reference's loss, gradients and logits, for one task (the exact chain) and
    several (each its own weights)."""
    gen = torch.Generator().manual_seed(11)
    net = _small_miniimagenet()
    params = _batched_params(net, tasks, dtype, gen)
    x, y = _inputs(tasks, 5, 2, (3, 30, 30), dtype, gen)
    ref_grads, ref_loss = _reference(net.to(dtype))(params, x, y)
    ref_logits = vmap(lambda p, xx: functional_call(net, p, (xx,)))(params, x)
    assert spec_for(net).native_convolutions()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for native, passes in ((True, "aten"), (False, "aten"), (True, "fused"), (False, "fused")):
        with kernels(passes):
            spec = ConvNetSpec(stride=1, pool=True, native=native, fused=passes == "fused")
        loss, grads = convnet_loss_and_grad(params, x, y, spec)
        torch.testing.assert_close(loss, ref_loss, **tol)
        for name in params:
            # the conv bias's gradient: exactly 0 here, rounding-sized in autograd
            atol = 1e3 * tol["atol"] if name.endswith("conv.bias") else tol["atol"]
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=tol["rtol"], atol=atol)
        torch.testing.assert_close(convnet_logits(params, x, spec), ref_logits, **tol)


def test_plan_shares_by_images_only_when_it_pays():
    oracle = ConvNetOracle(spec_for(OmniglotNet(5)))
    assert oracle.plan(5, 10, 2) == ("tasks", 3)  # 3/2 whole tasks beat 5 x 5 images (measured)
    assert oracle.plan(500, 5, 2) == ("tasks", 5)  # evaluation: items of 5 tasks from a queue
    assert oracle.plan(1, 10, 2) == ("images", 2)  # one task: split its batch
    assert oracle.plan(5, 10, 16) == ("images", 10)  # more cores than tasks
    assert oracle.plan(5, 10, 1) == ("tasks", 5)
    # PyTorch's convolutions (Mini-ImageNet): a task per item, the activations stay in cache
    assert ConvNetOracle(spec_for(MiniImageNetNet(5))).plan(500, 5, 2) == ("tasks", 1)


@pytest.fixture(params=["native", "python"])
def meetings(request, monkeypatch) -> str:
    """The workers' meetings: the native ops (required where CI runs: it has a compiler) or
    Python's (the fallback where none is found)."""
    from reptorch.fast import comm

    if request.param == "native":
        if not comm.native():
            if os.environ.get("CI") == "true":
                pytest.fail("the native meeting ops did not build")
            pytest.skip("no compiler for the native meeting ops")
    else:
        monkeypatch.setattr(comm, "native", lambda: False)
    return request.param


def test_group_allreduce_sums_in_rank_order_and_abort_releases_waiters(meetings):
    import threading

    from reptorch.fast import comm

    native = meetings == "native"

    def allreduce(group, rank, value):
        if native:
            return torch.ops.reptorch_comm.allreduce(group.id, rank, value)
        return comm.allreduce(group.id, rank, value)

    with comm.Group(2, native) as group:
        results = [None, None]

        def run(rank):
            for step in range(3):  # reuses both slot sets
                results[rank] = allreduce(group, rank, torch.tensor([rank + 1.0 + step]))

        threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert results[0].item() == results[1].item() == 7.0  # (1 + 2) + (2 + 2)

    with comm.Group(2, native) as group:
        errors = []

        def waiter():
            try:
                if native:
                    torch.ops.reptorch_comm.barrier(group.id)
                else:
                    group.wait()
            except Exception as error:
                errors.append(error)

        thread = threading.Thread(target=waiter)
        thread.start()
        group.abort()
        thread.join(timeout=30)
        assert not thread.is_alive() and len(errors) == 1 and comm.released(errors[0])


def test_a_failing_worker_raises_its_error_instead_of_hanging(meetings, monkeypatch):
    """Labels out of range in the second half of the images: that worker fails mid-step, the
    other is released from its barrier, and the caller sees the real error."""
    import threading

    from reptorch.inner_optim import Adam

    net = OmniglotNet(5)
    phi = {k: v.detach() for k, v in net.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    x, y = _inputs(2, 5, 2, (1, 28, 28), torch.float32, gen)
    y[:, 5:] = 99
    oracle = ConvNetOracle(spec_for(net), workers=2)
    monkeypatch.setattr(oracle, "plan", lambda tasks, batch, workers: ("images", 2))
    outcome = []

    def run():
        try:
            oracle.adapt({k: v.expand(2, *v.shape) for k, v in phi.items()}, [(x, y)], Adam(1e-3),
                         Adam(1e-3).init(phi))  # fmt: skip
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "adapt hung after a worker failed"
    assert len(outcome) == 1 and "BrokenBarrier" not in repr(outcome[0])
    assert "index" in str(outcome[0]).lower()


def test_eager_fallback_gives_the_scripted_numbers(monkeypatch):
    """REPTORCH_NO_JIT=1 runs the same kernel class without TorchScript: identical results."""
    import threading

    from reptorch.fast import convnet

    net = OmniglotNet(5)
    gen = torch.Generator().manual_seed(4)
    params = _batched_params(net, 2, torch.float32, gen)
    x, y = _inputs(2, 5, 2, (1, 28, 28), torch.float32, gen)
    scripted = convnet.loss_and_grad(params, x, y)
    assert isinstance(convnet.kernel(convnet.OMNIGLOT), torch.jit.ScriptModule)
    monkeypatch.setenv("REPTORCH_NO_JIT", "1")
    eager = []

    def run():  # a new thread gets new (eager) kernels
        assert not isinstance(convnet.kernel(convnet.OMNIGLOT), torch.jit.ScriptModule)
        eager.append(convnet.loss_and_grad(params, x, y))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    torch.testing.assert_close(eager[0][0], scripted[0], rtol=0, atol=0)
    for name in params:
        torch.testing.assert_close(eager[0][1][name], scripted[1][name], rtol=0, atol=0)


def test_cuda_matches_the_reference():
    """On a GPU (skipped without one): the fast oracle and its inner loop against the vmap
    reference, both in true fp32 (TF32 off, else cuDNN's reference itself is off by ~1e-2)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from reptorch import tree
    from reptorch.adapt import adapt
    from reptorch.functional import FunctionalModel
    from reptorch.inner_optim import Adam

    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for case in (0, 2, 5):
            make, shape, tasks, ways, per_class = CASES[case]
            gen = torch.Generator().manual_seed(case)
            torch.manual_seed(case)
            net = make(ways).cuda()
            params = {
                k: v.cuda()
                for k, v in _batched_params(net.cpu(), tasks, torch.float32, gen).items()
            }
            net.cuda()
            x, y = (t.cuda() for t in _inputs(tasks, ways, per_class, shape, torch.float32, gen))
            ref_grads, ref_loss = _reference(net)(params, x, y)
            loss, grads = fast_loss_and_grad_for(net)(params, x, y)
            # GPU reductions sum in other orders than the CPU: a little more slack than there
            torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=5e-5)
            for name in params:
                torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=5e-5)
        model = FunctionalModel(OmniglotNet(5).cuda())
        phi = model.init_params()
        gen = torch.Generator().manual_seed(3)
        batches = [
            tuple(t.cuda() for t in _inputs(3, 5, 2, (1, 28, 28), torch.float32, gen))
            for _ in range(4)
        ]
        opt = Adam(1e-3)
        params = tree.expand(phi, 3)
        ref = adapt(model.vmap_loss_and_grad(), params, batches, opt, opt.init(phi))
        new = adapt(model.batched_loss_and_grad(), params, batches, opt, opt.init(phi))
        for name in phi:
            if name.endswith("conv.bias"):  # Adam turns the reference's ~1e-9 noise into steps
                continue
            torch.testing.assert_close(new.params[name], ref.params[name], rtol=1e-4, atol=1e-5)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def test_functional_model_picks_the_fast_oracle_only_where_it_applies():
    from reptorch.functional import FunctionalModel

    model = FunctionalModel(OmniglotNet(5))
    assert isinstance(model.batched_loss_and_grad(), ConvNetOracle)
    assert not isinstance(model.batched_loss_and_grad(fast=False), ConvNetOracle)
    # The fast oracle hard-codes cross-entropy: another loss gets the generic vmap oracle.
    mse = FunctionalModel(OmniglotNet(5), loss_fn=lambda out, y: (out - y).pow(2).mean())
    assert not isinstance(mse.batched_loss_and_grad(), ConvNetOracle)
    assert not isinstance(FunctionalModel(SineMLP()).batched_loss_and_grad(), ConvNetOracle)
