"""Task sampler: reference semantics (`_mini_batches`, `_sample_mini_dataset`,
`_split_train_test`), determinism, errors, and the real Omniglot split."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from reptorch.data.dataset import ImageClassDataset
from reptorch.data.tasks import (
    EvalTaskList,
    TaskSampler,
    batched_minibatch_indices,
    minibatch_indices,
    shuffles,
    split_positions,
)
from reptorch.errors import ConfigError, DataError


def reference_mini_batches(samples, batch_size, num_batches, permutations):
    """A literal port of supervised-reptile's `_mini_batches` (without replacement), with each
    `random.shuffle` replaced by the next permutation from `permutations`."""
    samples = list(samples)
    cur_batch = []
    batch_count = 0
    while True:
        order = next(permutations)
        shuffled = [samples[i] for i in order]
        for sample in shuffled:
            cur_batch.append(sample)
            if len(cur_batch) < batch_size:
                continue
            yield cur_batch
            cur_batch = []
            batch_count += 1
            if batch_count == num_batches:
                return


@pytest.mark.parametrize(
    ("n", "batch", "batches"), [(50, 10, 5), (10, 4, 7), (3, 5, 4), (7, 7, 3), (20, 10, 1)]
)
def test_minibatch_indices_match_a_literal_port_of_the_reference(n, batch, batches) -> None:
    generator = torch.Generator().manual_seed(n * 100 + batch)
    state = generator.get_state()
    got = minibatch_indices(n, batch, batches, False, generator)
    generator.set_state(state)
    passes = -(-batch * batches // n)
    perms = iter(shuffles((1, passes), n, generator)[0].tolist())
    expected = list(reference_mini_batches(range(n), batch, batches, perms))
    assert got.dtype == torch.int64 and got.shape == (batches, batch)
    assert got.tolist() == expected


def test_without_replacement_each_pass_is_a_permutation_and_batches_span_passes() -> None:
    n, batch, batches = 10, 4, 15  # 60 draws: 6 shuffles; batch 2 spans the first two
    got = minibatch_indices(n, batch, batches, False, torch.Generator().manual_seed(0))
    stream = got.reshape(-1)
    for start in range(0, len(stream), n):
        assert sorted(stream[start : start + n].tolist()) == list(range(n))
    assert batch * 2 < n < batch * 3  # the third batch holds the end of one shuffle and the next


def test_with_replacement_batches_are_distinct_within() -> None:
    got = minibatch_indices(10, 10, 200, True, torch.Generator().manual_seed(0))
    assert got.shape == (200, 10)
    assert all(sorted(row) == list(range(10)) for row in got.tolist())
    got = minibatch_indices(10, 3, 500, True, torch.Generator().manual_seed(0))
    assert all(len(set(row)) == 3 for row in got.tolist())
    counts = torch.bincount(got.reshape(-1), minlength=10).float()
    assert counts.min() > 100  # every sample drawn, roughly uniformly (expected 150 each)
    with pytest.raises(ConfigError, match="batch size 11"):
        minibatch_indices(10, 11, 1, True, torch.Generator())


def test_batched_minibatch_indices_are_independent_per_task() -> None:
    got = batched_minibatch_indices(4, 10, 5, 2, False, torch.Generator().manual_seed(0))
    assert got.shape == (4, 2, 5)
    assert len({tuple(t.reshape(-1).tolist()) for t in got}) == 4


def fake_dataset(sizes: list[int]) -> ImageClassDataset:
    """Images that encode their own (class, index): pixel (0, 0) = class, (0, 1) = index."""
    images = torch.zeros(sum(sizes), 1, 2, 2, dtype=torch.uint8)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(sizes).cumsum(0)
    for c, size in enumerate(sizes):
        images[offsets[c] : offsets[c + 1], 0, 0, 0] = c
        images[offsets[c] : offsets[c + 1], 0, 0, 1] = torch.arange(size, dtype=torch.uint8)
    return ImageClassDataset(images, offsets, tuple(f"class{c}" for c in range(len(sizes))))


def ids(xs: torch.Tensor) -> torch.Tensor:
    """(class, index) ids of fake images (..., 1, 2, 2) -> (..., 2) int."""
    return (xs[..., 0, 0, :] * 255).round().long()


def test_train_tasks_follow_the_reference_mini_dataset() -> None:
    data = fake_dataset([20] * 12)
    sampler = TaskSampler(data, ways=5)
    generator = torch.Generator().manual_seed(0)
    tasks = sampler.sample_train(3, 10, 10, 5, generator=generator)  # k * B == N * shots
    assert tasks.xs.shape == (3, 5, 10, 1, 2, 2) and tasks.xs.dtype == torch.float32
    assert tasks.ys.shape == (3, 5, 10) and tasks.ys.dtype == torch.int64 and tasks.tail is None
    for t in range(3):
        pairs = ids(tasks.xs[t]).reshape(-1, 2)
        labels = tasks.ys[t].reshape(-1)
        assert len({tuple(p) for p in pairs.tolist()}) == 50  # one pass: every sample once
        classes = {}
        for (c, _), y in zip(pairs.tolist(), labels.tolist(), strict=True):
            assert classes.setdefault(y, c) == c  # a label is one class
        assert sorted(classes) == list(range(5)) and len(set(classes.values())) == 5
        assert torch.bincount(labels).tolist() == [10] * 5  # train_shots per class


def test_labels_are_assigned_in_random_order() -> None:
    sampler = TaskSampler(fake_dataset([20] * 5), ways=5)
    tasks = sampler.sample_train(50, 2, 10, 1, generator=torch.Generator().manual_seed(0))
    orders = set()
    for t in range(50):
        mapping = dict(
            zip(tasks.ys[t, 0].tolist(), ids(tasks.xs[t, 0])[:, 0].tolist(), strict=True)
        )
        orders.add(tuple(mapping[y] for y in range(5)))
    assert len(orders) > 10  # 120 orders possible; a fixed order would give 1


def test_uneven_classes_never_draw_past_a_class() -> None:
    data = fake_dataset([3, 20, 5, 3, 7])
    sampler = TaskSampler(data, ways=3)
    tasks = sampler.sample_eval(200, 2, 1, generator=torch.Generator().manual_seed(0))
    sizes = data.class_sizes
    for part in (tasks.support_xs, tasks.query_xs):
        pairs = ids(part).reshape(-1, 2)
        assert (pairs[:, 1] < sizes[pairs[:, 0]]).all()


def test_tail_is_disjoint_and_interleaved() -> None:
    sampler = TaskSampler(fake_dataset([20] * 8), ways=5)
    generator = torch.Generator().manual_seed(1)
    tasks = sampler.sample_train(4, 10, 5, 4, tail_shots=2, generator=generator)
    assert tasks.xs.shape == (4, 3, 5, 1, 2, 2)  # inner_iters - 1 batches of B
    tail_xs, tail_ys = tasks.tail
    assert tail_xs.shape == (4, 10, 1, 2, 2)  # N * tail_shots, not B
    assert tail_ys.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]] * 4  # reference round order
    for t in range(4):
        body = {tuple(p) for p in ids(tasks.xs[t]).reshape(-1, 2).tolist()}
        tail = [tuple(p) for p in ids(tail_xs[t]).tolist()]
        assert len(set(tail)) == 10 and not body & set(tail)
        label_of = dict(
            zip(
                ids(tasks.xs[t])[..., 0].reshape(-1).tolist(),
                tasks.ys[t].reshape(-1).tolist(),
                strict=True,
            )
        )
        assert all(label_of[c] == y for (c, _), y in zip(tail, tail_ys[t].tolist(), strict=True))
    with pytest.raises(ConfigError, match="tail_shots"):
        sampler.sample_train(1, 10, 5, 4, tail_shots=10, generator=generator)


def test_split_positions_is_the_reference_split_train_test() -> None:
    kept, held = split_positions(3, 4, 2)
    # samples 0..11 class-major; the first 2 of each class go to the test side, round by round
    assert held.tolist() == [0, 4, 8, 1, 5, 9]
    assert kept.tolist() == [2, 3, 6, 7, 10, 11]


def test_eval_tasks_shapes_labels_and_disjointness() -> None:
    sampler = TaskSampler(fake_dataset([20] * 10), ways=5)
    tasks = sampler.sample_eval(6, 3, 2, generator=torch.Generator().manual_seed(0))
    assert tasks.support_xs.shape == (6, 15, 1, 2, 2) and tasks.support_ys.shape == (6, 15)
    assert tasks.query_xs.shape == (6, 10, 1, 2, 2) and tasks.query_ys.shape == (6, 10)
    assert tasks.support_ys[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert tasks.query_ys[0].tolist() == [0, 1, 2, 3, 4] * 2
    for t in range(6):
        support = ids(tasks.support_xs[t]).tolist()
        query = ids(tasks.query_xs[t]).tolist()
        assert len({tuple(p) for p in support + query}) == 25
        label_of = {c: y for (c, _), y in zip(support, tasks.support_ys[t].tolist(), strict=True)}
        assert len(label_of) == 5
        assert all(
            label_of[c] == y for (c, _), y in zip(query, tasks.query_ys[t].tolist(), strict=True)
        )


def test_same_seed_same_tasks() -> None:
    sampler = TaskSampler(fake_dataset([20] * 10), ways=5)
    a = sampler.sample_train(2, 5, 4, 3, generator=torch.Generator().manual_seed(3))
    b = sampler.sample_train(2, 5, 4, 3, generator=torch.Generator().manual_seed(3))
    c = sampler.sample_train(2, 5, 4, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)
    assert not torch.equal(a.xs, c.xs)


def test_fixed_eval_list_is_identical_for_every_model_and_batch_size() -> None:
    sampler = TaskSampler(fake_dataset([20] * 10), ways=5)
    a = EvalTaskList(sampler, 10, 1, seed=7)
    b = EvalTaskList(sampler, 10, 1, seed=7)
    assert len(a) == 10
    whole = next(a.batches(10))
    chunks = list(b.batches(3))
    assert [len(c.support_xs) for c in chunks] == [3, 3, 3, 1]
    for field in range(4):
        assert torch.equal(whole[field], torch.cat([c[field] for c in chunks]))
    assert not torch.equal(next(EvalTaskList(sampler, 10, 1, seed=8).batches(10))[0], whole[0])


def test_errors_name_the_problem() -> None:
    data = fake_dataset([20, 20, 4, 20])
    with pytest.raises(
        DataError, match="5-way tasks need 5 classes but the train split has only 4"
    ):
        TaskSampler(data, ways=5, name="train")
    sampler = TaskSampler(data, ways=3)
    with pytest.raises(
        DataError, match="class 'class2' .* has 4 images, fewer than shots \\+ queries = 5"
    ):
        sampler.sample_eval(1, 4, 1, generator=torch.Generator())
    with pytest.raises(DataError, match="class2"):
        sampler.sample_train(1, 5, 5, 1, generator=torch.Generator())
    with pytest.raises(ConfigError, match="ways"):
        TaskSampler(data, ways=0)
    with pytest.raises(ConfigError, match="inner_batch"):
        sampler.sample_train(1, 2, 0, 1, generator=torch.Generator())


@pytest.fixture(scope="module")
def omniglot_train(shared_data: Path, omniglot_dir: Path, tmp_path_factory) -> ImageClassDataset:
    from reptorch.data.omniglot import load_omniglot

    cache = tmp_path_factory.getbasetemp() / "omniglot-cache"  # shared with test_omniglot
    return load_omniglot(shared_data, cache_dir=cache)["train"]


def test_omniglot_5way_sampling_and_throughput(omniglot_train: ImageClassDataset) -> None:
    sampler = TaskSampler(omniglot_train, ways=5, name="train")
    generator = torch.Generator().manual_seed(0)
    tasks = sampler.sample_train(5, 10, 10, 5, generator=generator)  # the paper's 5-way setting
    assert tasks.xs.shape == (5, 5, 10, 1, 28, 28)
    assert set(tasks.xs.unique().tolist()) == {0.0, 1.0}
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        sampler.sample_train(5, 10, 10, 5, generator=generator)
    rate = 5 * rounds / (time.perf_counter() - start)
    print(f"Omniglot 5-way training tasks/s: {rate:.0f}")
    assert rate > 500  # vectorised: thousands per second on one core
