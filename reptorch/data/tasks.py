"""N-way task sampling with the reference's semantics (supervised-reptile `reptile.py`).

Everything random comes from an explicit `torch.Generator` and is vectorised: a meta-batch of T
tasks costs a few `rand`/`topk`/`argsort` calls and one gather of uint8 images, never a Python
loop over tasks or samples. The order of draws is part of the contract (same seed, same tasks).

Reference semantics reproduced (paper-reference section 2):
- `_sample_mini_dataset`: N distinct classes in random order, labelled 0..N-1 in that order,
  `shots` distinct images of each; samples laid out class by class.
- `_mini_batches`: without replacement the task's samples are shuffled, consumed in order and
  reshuffled when used up, and a batch may span two shuffles; with replacement each batch is a
  `random.sample` (distinct within the batch, independent across batches).
- `_split_train_test(samples, test_shots)`: for each of `test_shots` rounds, the first remaining
  sample of each label (labels ascending) moves to the test side; the rest keep their order.
  Evaluation uses it for the query (K + Q drawn, Q per class held out); FOMAML's `--foml-tail`
  uses it for the separate last mini-batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from reptorch.data.dataset import ImageClassDataset
from reptorch.errors import ConfigError, DataError


@dataclass(frozen=True)
class TrainTasks:
    """The inner mini-batches of T training tasks.

    xs (T, k, B, *sample_shape) float32, ys (T, k, B) int64. With a separate tail (FOMAML's
    `tail_shots`), xs holds the first k - 1 mini-batches and `tail_xs` (T, N * tail_shots, ...),
    `tail_ys` (T, N * tail_shots) the last one: its size is N * tail_shots, not B.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    tail_xs: torch.Tensor | None = None
    tail_ys: torch.Tensor | None = None

    @property
    def tail(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tail_xs, tail_ys) or None: the `tail` argument of `Algorithm.meta_step`."""
        if self.tail_xs is None or self.tail_ys is None:
            return None
        return self.tail_xs, self.tail_ys


class EvalTasks(NamedTuple):
    """T evaluation tasks: support (T, N*K, ...) / (T, N*K), query (T, N*Q, ...) / (T, N*Q)."""

    support_xs: torch.Tensor
    support_ys: torch.Tensor
    query_xs: torch.Tensor
    query_ys: torch.Tensor


class TaskSource(Protocol):
    """What training and evaluation need from a task family (image classes or sine waves).

    Image samplers interpret `train_shots` as examples per class; a regression family may ignore
    `train_shots` and `tail_shots`. Returned tensors have a leading task dimension T and the
    shapes documented on `TrainTasks` and `EvalTasks`.
    """

    def sample_train(
        self,
        meta_batch: int,
        train_shots: int,
        inner_batch: int,
        inner_iters: int,
        replacement: bool = False,
        tail_shots: int | None = None,
        *,
        generator: torch.Generator,
    ) -> TrainTasks: ...

    def sample_eval(
        self, num_tasks: int, shots: int, queries: int = 1, *, generator: torch.Generator
    ) -> EvalTasks: ...


def _keys(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform sort keys; float64 so that ties (which would bias an argsort) never happen."""
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def shuffles(shape: tuple[int, ...], n: int, generator: torch.Generator) -> torch.Tensor:
    """Independent uniform permutations of range(n), int64 (*shape, n)."""
    return _keys((*shape, n), generator).argsort(dim=-1)


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def batched_minibatch_indices(
    num_tasks: int,
    num_samples: int,
    batch_size: int,
    num_batches: int,
    replacement: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """`minibatch_indices` for `num_tasks` independent tasks at once: (T, num_batches, B)."""
    _positive(num_samples=num_samples, batch_size=batch_size)
    if num_batches < 0:
        raise ConfigError(f"num_batches must be >= 0, got {num_batches}")
    if replacement:
        if batch_size > num_samples:
            raise ConfigError(
                f"with replacement a mini-batch holds distinct samples: batch size {batch_size} "
                f"exceeds the task's {num_samples} samples; lower the inner batch"
            )
        return shuffles((num_tasks, num_batches), num_samples, generator)[..., :batch_size]
    total = num_batches * batch_size
    passes = max(1, math.ceil(total / num_samples))
    stream = shuffles((num_tasks, passes), num_samples, generator).reshape(num_tasks, -1)
    return stream[:, :total].reshape(num_tasks, num_batches, batch_size)


def minibatch_indices(
    num_samples: int,
    batch_size: int,
    num_batches: int,
    replacement: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Sample indices of the reference's `_mini_batches`, int64 (num_batches, batch_size).

    Without replacement: concatenated independent shuffles of range(num_samples), cut into
    consecutive batches (a batch may span two shuffles). With replacement: each batch is
    `batch_size` distinct samples, independently per batch.
    """
    return batched_minibatch_indices(
        1, num_samples, batch_size, num_batches, replacement, generator
    )[0]


def split_positions(ways: int, per_class: int, held: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference `_split_train_test` on a class-major mini-dataset of `ways * per_class` samples.

    Returns (kept, held_out) positions: held_out is round-major (round r: sample r of each
    label, labels ascending), kept is class-major with the first `held` of each class removed.
    """
    grid = torch.arange(ways * per_class).view(ways, per_class)
    return grid[:, held:].reshape(-1), grid[:, :held].T.reshape(-1)


class TaskSampler:
    """N-way tasks from the classes of one `ImageClassDataset` (a `TaskSource`).

    Images are gathered as uint8 and converted once to float32 `images / 255`.
    """

    def __init__(self, dataset: ImageClassDataset, ways: int, name: str = "dataset") -> None:
        _positive(ways=ways)
        if ways > dataset.num_classes:
            raise DataError(
                f"{ways}-way tasks need {ways} classes but the {name} split has only "
                f"{dataset.num_classes}: lower the number of ways (--classes)"
            )
        self.dataset, self.ways, self.name = dataset, ways, name
        self._sizes = dataset.class_sizes
        self._starts = dataset.class_offsets[:-1]
        self._uniform = bool((self._sizes == self._sizes[0]).all())
        self._images_np = dataset.images.numpy()  # shares memory with the tensor

    def _require(self, per_class: int, what: str) -> None:
        small = (self._sizes < per_class).nonzero()
        if len(small):
            c = int(small[0])
            raise DataError(
                f"class {self.dataset.class_names[c]!r} of the {self.name} split has "
                f"{int(self._sizes[c])} images, fewer than {what} = {per_class}: lower them or "
                f"remove classes with too few images"
            )

    def sample_image_indices(
        self, num_tasks: int, per_class: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Image rows (T, N, per_class): N distinct classes in random order (row j = label j),
        `per_class` distinct images of each in random order (reference `_sample_mini_dataset`)."""
        classes = _keys((num_tasks, self.dataset.num_classes), generator).topk(self.ways).indices
        sizes = self._sizes[classes]  # (T, N)
        width = int(sizes.max())
        keys = _keys((num_tasks, self.ways, width), generator)
        if not self._uniform:  # images beyond a class's size never win
            keys.masked_fill_(torch.arange(width) >= sizes.unsqueeze(-1), -1.0)
        picks = keys.topk(per_class, dim=-1).indices
        return self._starts[classes].unsqueeze(-1) + picks

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 `images / 255` for integer rows of any shape: (*rows.shape, C, H, W).

        Gathered and converted in NumPy, single-threaded on purpose: these ops are small, and
        torch's intra-op threads made them ~50x slower when another process held the other core
        (CPUs shared with training). IEEE division, so the values equal `images.float() / 255`.
        """
        picked = self._images_np[rows.numpy()]
        return torch.from_numpy(np.divide(picked, np.float32(255), dtype=np.float32))

    def sample_train(
        self,
        meta_batch: int,
        train_shots: int,
        inner_batch: int,
        inner_iters: int,
        replacement: bool = False,
        tail_shots: int | None = None,
        *,
        generator: torch.Generator,
    ) -> TrainTasks:
        """`meta_batch` training tasks: `train_shots` per class, `inner_iters` mini-batches of
        `inner_batch` (reference `Reptile.train_step`). With `tail_shots`, the last mini-batch
        is N * tail_shots held-out samples (reference `FOML._mini_batches`) and only
        inner_iters - 1 mini-batches are drawn from the other train_shots - tail_shots."""
        _positive(
            meta_batch=meta_batch,
            train_shots=train_shots,
            inner_batch=inner_batch,
            inner_iters=inner_iters,
        )
        if tail_shots is not None:
            _positive(tail_shots=tail_shots)
            if tail_shots >= train_shots:
                raise ConfigError(
                    f"tail_shots={tail_shots} must be smaller than train_shots={train_shots}: "
                    f"the other mini-batches need samples left over"
                )
        self._require(train_shots, "train shots")
        n, T = self.ways, meta_batch
        rows = self.sample_image_indices(T, train_shots, generator).reshape(T, n * train_shots)
        labels = torch.arange(n).repeat_interleave(train_shots)
        tail_rows = tail_labels = None
        if tail_shots is not None:
            kept, held = split_positions(n, train_shots, tail_shots)
            tail_rows, tail_labels = rows[:, held], labels[held].expand(T, -1)
            rows, labels, inner_iters = rows[:, kept], labels[kept], inner_iters - 1
        pos = batched_minibatch_indices(
            T, rows.shape[1], inner_batch, inner_iters, replacement, generator
        )
        batch_rows = rows.gather(1, pos.reshape(T, -1)).view_as(pos)
        tasks = TrainTasks(self.images(batch_rows), labels[pos])
        if tail_rows is None:
            return tasks
        return TrainTasks(tasks.xs, tasks.ys, self.images(tail_rows), tail_labels.clone())

    def sample_eval_indices(
        self, num_tasks: int, shots: int, queries: int = 1, *, generator: torch.Generator
    ) -> EvalTasks:
        """Like `sample_eval` but with image rows (int64) in place of images: small to keep."""
        _positive(num_tasks=num_tasks, shots=shots, queries=queries)
        self._require(shots + queries, "shots + queries")
        n, per = self.ways, shots + queries
        rows = self.sample_image_indices(num_tasks, per, generator).reshape(num_tasks, n * per)
        labels = torch.arange(n).repeat_interleave(per)
        kept, held = split_positions(n, per, queries)
        return EvalTasks(
            rows[:, kept],
            labels[kept].expand(num_tasks, -1).clone(),
            rows[:, held],
            labels[held].expand(num_tasks, -1).clone(),
        )

    def materialise(self, tasks: EvalTasks) -> EvalTasks:
        """Evaluation tasks of image rows -> the same tasks with float32 images."""
        return EvalTasks(
            self.images(tasks.support_xs),
            tasks.support_ys,
            self.images(tasks.query_xs),
            tasks.query_ys,
        )

    def sample_eval(
        self, num_tasks: int, shots: int, queries: int = 1, *, generator: torch.Generator
    ) -> EvalTasks:
        """`num_tasks` evaluation tasks: N classes, K + Q distinct images each, Q per class held
        out as queries (reference `evaluate` with Q = 1)."""
        return self.materialise(
            self.sample_eval_indices(num_tasks, shots, queries, generator=generator)
        )


class EvalTaskList:
    """A fixed, seeded list of evaluation tasks: every model is scored on the same tasks.

    Holds only image rows; `batches(size)` yields `EvalTasks` with images, in order, and the
    tasks do not depend on the batch size.
    """

    def __init__(
        self, sampler: TaskSampler, num_tasks: int, shots: int, queries: int = 1, seed: int = 0
    ) -> None:
        self.sampler = sampler
        generator = torch.Generator().manual_seed(seed)
        self.tasks = sampler.sample_eval_indices(num_tasks, shots, queries, generator=generator)

    def __len__(self) -> int:
        return self.tasks.support_xs.shape[0]

    def batches(self, size: int, start: int = 0, stop: int | None = None) -> Iterator[EvalTasks]:
        """Consecutive chunks of at most `size` of the tasks start..stop - 1 (default: all),
        images materialised per chunk."""
        _positive(size=size)
        stop = len(self) if stop is None else min(stop, len(self))
        for first in range(start, stop, size):
            chunk = EvalTasks(*(t[first : min(first + size, stop)] for t in self.tasks))
            yield self.sampler.materialise(chunk)
