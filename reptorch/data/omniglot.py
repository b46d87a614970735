"""Omniglot (Lake et al. 2015): 1623 characters x 20 drawings, split and augmented as the reference.

The parts read by `reptorch.data.omniglot_files` are pooled in (alphabet, character) order and
split: the reference's split (Python's `random.shuffle` of the pool, first 1200 train, remaining
423 test) or the official background/evaluation one; training characters are augmented with
rotations by 0/90/180/270 degrees, each rotation a class of its own.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from reptorch.data.dataset import ImageClassDataset
from reptorch.data.omniglot_files import (
    EXPECTED,
    FORCE_HINT,
    find_sources,
    load_parts,
    part_counts,
    verify_parts,
)
from reptorch.data.roots import dataset_dir
from reptorch.errors import ConfigError, DataError

REFERENCE_TRAIN_CLASSES = 1200
SPLITS = ("reference", "official")


def select_classes(data: ImageClassDataset, classes: Iterable[int]) -> ImageClassDataset:
    """A dataset of the given classes of `data`, in the given order."""
    idx = torch.as_tensor(list(classes), dtype=torch.int64)
    starts, sizes = data.class_offsets[idx], data.class_sizes[idx]
    offsets = torch.zeros(len(idx) + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    within = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], sizes)
    rows = torch.repeat_interleave(starts, sizes) + within
    names = tuple(data.class_names[i] for i in idx.tolist())
    return ImageClassDataset(data.images[rows], offsets, names)


def pool_parts(parts: dict[str, ImageClassDataset]) -> ImageClassDataset:
    """All characters in one dataset, ordered by (alphabet, character) name as the reference."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    images = torch.cat([p.images for p in parts.values()])
    sizes = torch.cat([p.class_sizes for p in parts.values()])
    names = tuple(n for p in parts.values() for n in p.class_names)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    merged = ImageClassDataset(images, offsets, names)
    order = sorted(range(len(names)), key=names.__getitem__)
    return select_classes(merged, order)


def rotate_classes(
    data: ImageClassDataset, quarters: Sequence[int] = (0, 1, 2, 3)
) -> ImageClassDataset:
    """Each class once per rotation (`torch.rot90` by q quarter turns), as a separate class.

    Classes are ordered character-major (c0 rot0, c0 rot90, ..., c1 rot0, ...) as the
    reference's `augment_dataset`; rotating the 1-bit images by multiples of 90 degrees is exact.
    """
    n, r = data.num_classes, len(quarters)
    sizes = data.class_sizes.repeat_interleave(r)  # (n * r,), class-major
    offsets = torch.zeros(n * r + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    names = tuple(f"{name}/rot{90 * q:03d}" for name in data.class_names for q in quarters)
    if n and bool((data.class_sizes == data.class_sizes[0]).all()):  # one reshape, no gather
        per_class = data.images.reshape(n, -1, *data.image_shape)
        turns = [torch.rot90(per_class, q, dims=(-2, -1)) for q in quarters]
        images = torch.stack(turns, dim=1).reshape(-1, *data.image_shape)
        return ImageClassDataset(images, offsets, names)
    rotated = torch.stack([torch.rot90(data.images, q, dims=(-2, -1)) for q in quarters])
    which = torch.arange(r).repeat(n).repeat_interleave(sizes)
    starts = data.class_offsets[:-1].repeat_interleave(r).repeat_interleave(sizes)
    within = torch.arange(int(offsets[-1])) - offsets[:-1].repeat_interleave(sizes)
    images = rotated[which, starts + within]
    return ImageClassDataset(images, offsets, names)


def reference_order(num_characters: int, seed: int) -> list[int]:
    """The reference's shuffle of the pooled characters: `random.seed(seed)`, `random.shuffle`.

    supervised-reptile's `split_dataset` shuffles the (alphabet, character)-sorted list with
    Python's global `random` seeded by `--seed` and takes the first 1200 to train. A private
    `random.Random(seed)` draws the same permutation (shuffle depends only on the list's length)
    without touching the caller's global state, so the 423 test characters of seed 0 are the
    paper's (`reference-split-seed0-test.txt` in the shared data).
    """
    order = list(range(num_characters))
    random.Random(seed).shuffle(order)
    return order


def split_omniglot(
    parts: dict[str, ImageClassDataset],
    split: str = "reference",
    seed: int = 0,
    val_classes: int = 0,
    train_classes: int = REFERENCE_TRAIN_CLASSES,
    rotate: bool = True,
) -> dict[str, ImageClassDataset]:
    """{"train", ["val",] "test"} class splits; rotations (x4 classes) on "train" only.

    reference: all characters shuffled with `seed`, the first `train_classes` (1200) train, the
    rest (423) test. official: background trains, evaluation tests. `val_classes` characters
    are carved from the training characters (before rotation) and kept unrotated.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown Omniglot split {split!r}: use one of {', '.join(SPLITS)}")
    generator = torch.Generator().manual_seed(seed)
    if split == "reference":
        pool = pool_parts(parts)
        if not 0 < train_classes < pool.num_classes:
            raise ConfigError(
                f"train_classes={train_classes} must be between 1 and {pool.num_classes - 1} "
                f"(the number of characters found minus one)"
            )
        order = reference_order(pool.num_classes, seed)
        train_idx, test = order[:train_classes], select_classes(pool, order[train_classes:])
        train_pool = pool
    else:
        if "background" not in parts:
            raise DataError(
                "the official split needs images_background and images_evaluation (zips or "
                "folders); this Omniglot folder has one pool of alphabets: use split='reference'"
            )
        train_pool, test = parts["background"], parts["evaluation"]
        train_idx = list(range(train_pool.num_classes))
    if not 0 <= val_classes < len(train_idx):
        raise ConfigError(
            f"val_classes={val_classes} must be between 0 and {len(train_idx) - 1} "
            f"(the {len(train_idx)} training characters)"
        )
    out: dict[str, ImageClassDataset] = {}
    if val_classes:
        if split == "official":  # carve a random subset; the reference order is random already
            perm = torch.randperm(len(train_idx), generator=generator).tolist()
            held = set(perm[len(train_idx) - val_classes :])
            val_idx = [i for i in train_idx if i in held]
            train_idx = [i for i in train_idx if i not in held]
        else:
            train_idx, val_idx = train_idx[:-val_classes], train_idx[-val_classes:]
        out["val"] = select_classes(train_pool, val_idx)
    train = select_classes(train_pool, train_idx)
    out["train"] = rotate_classes(train) if rotate else train
    out["test"] = test
    return {k: out[k] for k in ("train", "val", "test") if k in out}


def load_omniglot(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "reference",
    seed: int = 0,
    val_classes: int = 0,
    train_classes: int = REFERENCE_TRAIN_CLASSES,
    rotate: bool = True,
    verify: bool = True,
    cache_dir: Path | None = None,
) -> dict[str, ImageClassDataset]:
    """Omniglot from `<root>/omniglot` split into {"train", ["val",] "test"}.

    With `verify` (default) anything but the complete official set (1623 x 20) is a `DataError`
    naming the first difference, so a half-extracted download never trains silently.
    """
    sources, parts = load_parts(data_dir, cache_dir)
    if verify:
        problems = verify_parts(parts)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(
                f"incomplete Omniglot in {sources.directory}: {problems[0]}{more}; "
                f"{FORCE_HINT}, or see `reptorch data check omniglot`"
            )
    return split_omniglot(parts, split, seed, val_classes, train_classes, rotate)


def check_omniglot(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: Path | None = None
) -> dict[str, object]:
    """A summary of the Omniglot found under the data root, for `reptorch data check`.

    Decodes every image once (later served from the cache), so corrupt files are found::

        {"dataset": "omniglot", "path": str, "layout": "zip" | "folders" | "reference" | None,
         "status": "ok" | "partial" | "missing" | "corrupt",
         "splits": {part: {"alphabets", "characters", "images", "expected_alphabets",
                           "expected_characters", "expected_images"}},
         "totals": {"alphabets", "characters", "images"}, "problems": [str, ...]}
    """
    directory = dataset_dir("omniglot", data_dir)
    summary: dict[str, object] = {
        "dataset": "omniglot",
        "path": str(directory),
        "layout": None,
        "status": "missing",
        "splits": {},
        "totals": {"alphabets": 0, "characters": 0, "images": 0},
        "problems": [],
    }
    try:
        sources = find_sources(directory)
    except DataError as err:
        summary["problems"] = [str(err)]
        return summary
    summary["layout"] = sources.layout
    try:
        _, parts = load_parts(data_dir, cache_dir)
    except DataError as err:
        summary.update(status="corrupt", problems=[str(err)])
        return summary
    splits = {}
    for part, data in parts.items():
        got, expected = part_counts(data), EXPECTED[part]
        splits[part] = {
            **dict(zip(("alphabets", "characters", "images"), got, strict=True)),
            **{
                f"expected_{k}": v
                for k, v in zip(("alphabets", "characters", "images"), expected, strict=True)
            },
        }
    totals = [sum(s[k] for s in splits.values()) for k in ("alphabets", "characters", "images")]
    problems = verify_parts(parts)
    summary.update(
        splits=splits,
        totals=dict(zip(("alphabets", "characters", "images"), totals, strict=True)),
        problems=problems,
        status="partial" if problems else "ok",
    )
    return summary
