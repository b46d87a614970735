"""Few-shot problems on tables: where N-way K-shot episodes come from, one class per family.

Every problem offers the same four things, all drawn with a `torch.Generator`:
  - `train_tasks`: meta-training tasks (support sets only) for Reptile and joint training;
  - `pretrain_batch`: labelled rows over all meta-train classes at once (joint pre-training);
  - `episodes(split, ...)`: validation or test episodes, a support and a query set each;
  - `n_way`, `dim`, `n_pretrain_classes`.
Labels are re-shuffled in every episode: the i-th class drawn is label i, so a fixed network
(the untouched initialisation) can only score at chance, 1/N.

Family A (`ClassSplitProblem`): one table, its classes split into meta-train / validation / test;
  standardised with statistics of the meta-train classes only.
Family B (`SyntheticProblem`): y = argmax(W_t relu(U x)), U shared (positive control) or drawn
  per task (negative control).
Family C (`TableTransferProblem`): whole tables held out; 2-way episodes over a random subset of
  columns, standardised with the support set's own statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reptorch.tabular.data import Encoder, Table

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Episodes:
    """E episodes of one shape: support (E, N*K, d) / (E, N*K), query (E, N*Q, d) / (E, N*Q)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    n_way: int

    @property
    def count(self) -> int:
        return self.support_x.shape[0]


def _randint(gen: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (), generator=gen))


def sample_classes_and_rows(
    class_rows: list[torch.Tensor], n_way: int, per_class: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """N classes drawn at random among those with `per_class` rows, that many distinct rows of
    each; returns the row indices (N, per_class) and their labels (N, per_class): the i-th class
    drawn is label i."""
    eligible = [rows for rows in class_rows if len(rows) >= per_class]
    if len(eligible) < n_way:
        raise ValueError(f"fewer than {n_way} classes with {per_class} rows")
    chosen = torch.randperm(len(eligible), generator=gen)[:n_way]
    rows = []
    for c in chosen.tolist():
        pool = eligible[c]
        rows.append(pool[torch.randperm(len(pool), generator=gen)[:per_class]])
    labels = torch.arange(n_way).repeat_interleave(per_class).view(n_way, per_class)
    return torch.stack(rows), labels


def split_support_query(
    x: torch.Tensor, y: torch.Tensor, shots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, K+Q, d), y (N, K+Q) -> support (N*K, d), (N*K) and query (N*Q, d), (N*Q)."""
    d = x.shape[-1]
    return (
        x[:, :shots].reshape(-1, d),
        y[:, :shots].reshape(-1),
        x[:, shots:].reshape(-1, d),
        y[:, shots:].reshape(-1),
    )


def stack_episodes(parts: list[tuple[torch.Tensor, ...]], n_way: int) -> Episodes:
    sx, sy, qx, qy = (torch.stack(p) for p in zip(*parts))
    return Episodes(sx, sy, qx, qy, n_way)


class Problem:
    """What every family shares: episodes drawn one by one by `_episode(split, K, Q, gen)`, and
    meta-training tasks as episodes of the 'train' split without a query set."""

    n_way: int

    def _episode(self, split: str, shots: int, queries: int, gen: torch.Generator):
        raise NotImplementedError

    def episodes(
        self, split: str, count: int, shots: int, queries: int, gen: torch.Generator
    ) -> Episodes:
        parts = [self._episode(split, shots, queries, gen) for _ in range(count)]
        return stack_episodes(parts, self.n_way)

    def train_tasks(
        self, count: int, shots: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (T, N*shots, d), y (T, N*shots)): T meta-training tasks, labels re-shuffled."""
        eps = self.episodes("train", count, shots, 0, gen)
        return eps.support_x, eps.support_y


def split_classes(num_classes: int, seed: int) -> tuple[list[int], list[int], list[int], int]:
    """Family A's class split: N = min(5, C // 3) test and validation classes, the rest meta-train.
    Returns (train, val, test, N)."""
    n_way = min(5, num_classes // 3)
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    test, val, train = order[:n_way], order[n_way : 2 * n_way], order[2 * n_way :]
    return sorted(train), sorted(val), sorted(test), n_way


class ClassSplitProblem(Problem):
    """Family A: new classes of the same table, 5-way where the held-out classes allow."""

    family = "A"

    def __init__(self, table: Table, split_seed: int = 0) -> None:
        self.name = table.name
        self.table = table
        train, val, test, self.n_way = split_classes(table.num_classes, split_seed)
        self.classes = {"train": train, "val": val, "test": test}
        rows = table.class_rows()
        train_rows = np.concatenate([rows[c] for c in train])
        self.encoder = Encoder(table, train_rows)  # statistics of meta-train classes only
        self.features = self.encoder.transform(np.arange(table.rows))
        self.dim = self.features.shape[1]
        self.class_rows = {
            split: [torch.from_numpy(rows[c]) for c in cs] for split, cs in self.classes.items()
        }
        self.n_pretrain_classes = len(train)
        self._train_rows = torch.from_numpy(train_rows)
        relabel = torch.full((table.num_classes,), -1, dtype=torch.long)
        relabel[torch.tensor(train)] = torch.arange(len(train))
        self._pretrain_labels = relabel[torch.from_numpy(table.labels)]

    def _episode(self, split: str, shots: int, queries: int, gen: torch.Generator):
        idx, y = sample_classes_and_rows(self.class_rows[split], self.n_way, shots + queries, gen)
        return split_support_query(self.features[idx], y, shots)

    def pretrain_batch(self, size: int, gen: torch.Generator):
        rows = self._train_rows[torch.randint(len(self._train_rows), (size,), generator=gen)]
        return self.features[rows], self._pretrain_labels[rows]


class SyntheticProblem(Problem):
    """Family B: y = argmax_c (W_t relu(U x))_c, x ~ N(0, I_dim), U (hidden, dim), W_t (N, hidden).

    shared=True: one U for every task (a shared low-dimensional feature map that meta-learning
    can find: Reptile must help). shared=False: U drawn afresh per task (nothing shared: Reptile
    must not help). A task is a set of rows labelled by its (U, W_t); a task whose rarest class
    falls under `min_share` of the rows is redrawn, so every class can supply its examples.
    Meta-training uses a pool of `pool` tasks (pre-training labels every (task, class) pair);
    validation and test tasks are fresh draws from their own seeds.
    """

    family = "B"

    def __init__(
        self,
        shared: bool,
        dim: int = 16,
        hidden: int = 4,
        n_way: int = 5,
        pool: int = 200,
        rows: int = 2000,
        min_share: float = 0.02,
        seed: int = 0,
    ) -> None:
        self.name = "positive" if shared else "negative"
        self.shared, self.dim, self.hidden, self.n_way = shared, dim, hidden, n_way
        self.rows, self.min_share, self.seed = rows, min_share, seed
        self.n_pretrain_classes = pool * n_way
        self._u = self._draw_u(torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed * 7919 + 1)
        self._pool = [self._draw_task(gen) for _ in range(pool)]

    def _draw_u(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(self.hidden, self.dim, generator=gen) / self.dim**0.5

    def label(self, u: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (torch.relu(x @ u.T) @ w.T).argmax(-1)

    def _draw_task(self, gen: torch.Generator):
        """(U, W, rows x, class rows) of a fresh task whose classes all hold min_share of x."""
        while True:
            u = self._u if self.shared else self._draw_u(gen)
            w = torch.randn(self.n_way, self.hidden, generator=gen)
            x = torch.randn(self.rows, self.dim, generator=gen)
            y = self.label(u, w, x)
            counts = torch.bincount(y, minlength=self.n_way)
            if counts.min() >= self.min_share * self.rows:
                return u, w, x, [(y == c).nonzero().flatten() for c in range(self.n_way)]

    def _task_episode(self, task, shots: int, queries: int, gen: torch.Generator):
        _, _, x, class_rows = task
        idx, y = sample_classes_and_rows(class_rows, self.n_way, shots + queries, gen)
        return split_support_query(x[idx], y, shots)

    def episodes(self, split, count, shots, queries, gen) -> Episodes:
        if split == "train":
            tasks = [self._pool[_randint(gen, len(self._pool))] for _ in range(count)]
        else:
            offset = {"val": 2, "test": 3}[split]
            task_gen = torch.Generator().manual_seed(
                self.seed * 7919 + offset + _randint(gen, 2**30)
            )
            tasks = [self._draw_task(task_gen) for _ in range(count)]
        parts = [self._task_episode(task, shots, queries, gen) for task in tasks]
        return stack_episodes(parts, self.n_way)

    def pretrain_batch(self, size: int, gen: torch.Generator):
        index = _randint(gen, len(self._pool))
        u, w, _, _ = self._pool[index]
        x = torch.randn(size, self.dim, generator=gen)
        return x, self.label(u, w, x) + index * self.n_way


# Tables that come from one source in another guise never sit on both sides of family C's split.
SOURCE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("australian", "crx"),  # Statlog Australian credit = Quinlan's credit approval
    ("wdbc", "wisconsin"),  # Wisconsin breast cancer (diagnostic and original)
    ("ring", "twonorm"),  # Breiman's DELVE generators
    ("optdigits", "penbased"),  # Alpaydin's handwritten digits (optical and pen)
)


def group_tables(names: list[str]) -> list[tuple[str, ...]]:
    """The tables in groups by source (singletons for the rest), in name order."""
    groups, grouped = [], set()
    for group in SOURCE_GROUPS:
        members = tuple(n for n in group if n in names)
        if members:
            groups.append(members)
            grouped.update(members)
    groups += [(n,) for n in names if n not in grouped]
    return sorted(groups)


def split_tables(names: list[str], seed: int = 0) -> dict[str, list[str]]:
    """Family C's split by source group: about 60% / 20% / 20% of the groups."""
    groups = group_tables(sorted(names))
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = n_val = max(1, round(0.2 * len(groups)))
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {s: sorted(n for g in idx for n in groups[g]) for s, idx in parts.items()}


def standardise_by(support: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """(x - mean) / std with the support rows' statistics (std < 1e-8 taken as 1)."""
    mean = support.mean(0)
    std = support.std(0, unbiased=False)
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    return [(t - mean) / std for t in (support, *others)]


class TableTransferProblem(Problem):
    """Family C: 2-way episodes on tables never seen in meta-training, over `dim` random columns
    (zero columns pad a table with fewer), standardised with the support set's own statistics."""

    family = "C"

    def __init__(
        self, tables: dict[str, Table], dim: int = 8, n_way: int = 2, split_seed: int = 0
    ) -> None:
        self.name = "held-out tables"
        self.dim, self.n_way = dim, n_way
        self.splits = split_tables(list(tables), split_seed)
        self.features: dict[str, torch.Tensor] = {}
        self.class_rows: dict[str, list[torch.Tensor]] = {}
        self.labels: dict[str, torch.Tensor] = {}
        for name, table in tables.items():
            # raw numbers and the table's category vocabulary; scaled per episode (support only)
            raw = Encoder(table, np.arange(table.rows))
            raw.stats = [(0.0, 1.0) if isinstance(s, tuple) else s for s in raw.stats]
            self.features[name] = raw.transform(np.arange(table.rows))
            self.class_rows[name] = [torch.from_numpy(r) for r in table.class_rows()]
            self.labels[name] = torch.from_numpy(table.labels)
        self.offsets: dict[str, int] = {}
        total = 0
        for name in self.splits["train"]:
            self.offsets[name] = total
            total += len(self.class_rows[name])
        self.n_pretrain_classes = total

    def _columns(self, name: str, gen: torch.Generator) -> torch.Tensor:
        """`dim` column indices of table `name` (-1: a zero column), in random order."""
        width = self.features[name].shape[1]
        cols = torch.randperm(width, generator=gen)[: self.dim]
        if width < self.dim:
            cols = torch.cat([cols, torch.full((self.dim - width,), -1)])
            cols = cols[torch.randperm(self.dim, generator=gen)]
        return cols

    def _select(self, name: str, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        x = self.features[name][rows][..., cols.clamp(min=0)]
        return x * (cols >= 0)

    def eligible(self, split: str, per_class: int) -> list[str]:
        """The tables of a split with `n_way` classes of at least `per_class` rows."""
        return [
            name
            for name in self.splits[split]
            if sum(len(r) >= per_class for r in self.class_rows[name]) >= self.n_way
        ]

    def _episode(self, split: str, shots: int, queries: int, gen: torch.Generator):
        names = self.eligible(split, shots + queries)
        name = names[_randint(gen, len(names))]
        idx, y = sample_classes_and_rows(self.class_rows[name], self.n_way, shots + queries, gen)
        x = self._select(name, idx, self._columns(name, gen))
        sx, sy, qx, qy = split_support_query(x, y, shots)
        sx, qx = standardise_by(sx, qx)
        return sx, sy, qx, qy

    def pretrain_batch(self, size: int, gen: torch.Generator):
        names = self.splits["train"]
        name = names[_randint(gen, len(names))]
        rows = torch.randint(len(self.labels[name]), (size,), generator=gen)
        (x,) = standardise_by(self._select(name, rows, self._columns(name, gen)))
        return x, self.labels[name][rows] + self.offsets[name]
