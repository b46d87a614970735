"""Any dataset of class folders (`folder:PATH`): `PATH/<class>/<image>`, or split into
`PATH/train/<class>/...`, `PATH/val/...`, `PATH/test/...`.

Without split folders the classes (not the images) are divided into train/val/test with a seeded
permutation, as few-shot learning needs: test tasks must come from classes never trained on.
Decoded images are cached once for the folder; a different seed or fractions only re-splits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from reptorch.data.cache import cached
from reptorch.data.dataset import ImageClassDataset
from reptorch.data.images import ImageSource, decode_images, file_source, is_image_name
from reptorch.errors import ConfigError, DataError

SPEC_PREFIX = "folder:"
SPLITS = ("train", "val", "test")
SPLIT_MODES = ("auto", "folders", "classes")
CACHE_VERSION = 1


def folder_path(spec: str) -> Path:
    """The PATH of a `folder:PATH` dataset name."""
    if not spec.startswith(SPEC_PREFIX) or not spec[len(SPEC_PREFIX) :]:
        raise ConfigError(f"dataset {spec!r} is not of the form folder:PATH")
    return Path(spec[len(SPEC_PREFIX) :]).expanduser()


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(
        Path(e.path) for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
    )


def _images_of(class_dir: Path) -> list[ImageSource]:
    entries = sorted(os.listdir(class_dir))
    names = [n for n in entries if is_image_name(n) and (class_dir / n).is_file()]
    if not names:
        nested = any((class_dir / n).is_dir() for n in entries)
        hint = " (images must sit directly in it, not in subfolders)" if nested else ""
        raise DataError(
            f"{class_dir} is an empty class folder: no .png/.jpg/... images{hint}; "
            "add images or delete the folder"
        )
    return [file_source(class_dir / n) for n in names]


def _decode_classes(
    class_dirs: list[Path], image_size: tuple[int, int], channels: int, workers: int | None
) -> ImageClassDataset:
    per_class = [_images_of(d) for d in class_dirs]
    sources = [s for images in per_class for s in images]
    offsets = torch.tensor([0, *np.cumsum([len(x) for x in per_class]).tolist()], dtype=torch.int64)
    images = decode_images(sources, image_size, channels, workers=workers)
    return ImageClassDataset(images, offsets, tuple(d.name for d in class_dirs))


def select_classes(dataset: ImageClassDataset, indices: list[int]) -> ImageClassDataset:
    """A dataset of the classes `indices` of `dataset`, in that order."""
    offsets = dataset.class_offsets.tolist()
    parts = [dataset.images[offsets[i] : offsets[i + 1]] for i in indices]
    sizes = [len(p) for p in parts]
    images = torch.cat(parts) if parts else dataset.images[:0]
    new_offsets = torch.tensor([0, *np.cumsum(sizes).tolist()], dtype=torch.int64)
    return ImageClassDataset(images, new_offsets, tuple(dataset.class_names[i] for i in indices))


def _split_sizes(num_classes: int, fractions: tuple[float, float, float], path: Path) -> list[int]:
    """Classes per split by largest remainders, then at least one class for each split wanted."""
    raw = [f * num_classes for f in fractions]
    sizes = [math.floor(r) for r in raw]
    by_remainder = sorted(range(3), key=lambda i: (sizes[i] - raw[i], i))
    for i in by_remainder[: num_classes - sum(sizes)]:
        sizes[i] += 1
    for i in range(3):
        largest = max(range(3), key=lambda j: sizes[j])
        if fractions[i] > 0 and sizes[i] == 0 and sizes[largest] > 1:
            sizes[largest] -= 1
            sizes[i] += 1
    if any(n < 1 for n, f in zip(sizes, fractions, strict=True) if f > 0):
        raise DataError(
            f"{path} has {num_classes} classes, too few to split by class into "
            f"train/val/test {fractions[0]:g}/{fractions[1]:g}/{fractions[2]:g} with at least "
            "one class in each: add class folders or change the fractions"
        )
    return sizes


def _check_options(
    image_size: tuple[int, int], channels: int, split: str, fractions: tuple[float, ...]
) -> None:
    if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
        raise ConfigError(f"image_size {image_size!r} must be two positive integers (H, W)")
    if channels not in (1, 3):
        raise ConfigError(f"channels {channels!r} must be 1 (grayscale) or 3 (RGB)")
    if split not in SPLIT_MODES:
        raise ConfigError(f"split {split!r} must be one of {', '.join(SPLIT_MODES)}")
    if (
        len(fractions) != 3
        or any(f < 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    ):
        raise ConfigError(
            f"fractions {fractions!r} must be three non-negative numbers (train, val, test) "
            "summing to 1"
        )


def load_folder(
    path: Path,
    image_size: tuple[int, int] = (84, 84),
    channels: int = 3,
    split: str = "auto",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> dict[str, ImageClassDataset]:
    """Class folders as uint8 (N, channels, H, W) datasets keyed "train"/"val"/"test".

    `split="folders"` reads `PATH/{train,val,test}/<class>/` (the splits present);
    `split="classes"` divides the classes of `PATH/<class>/` by `fractions` with a permutation
    seeded by `seed` (splits with fraction 0 are left out); "auto" picks "folders" when
    `PATH/train/` exists. Images are resized to `image_size` = (H, W) and converted to RGB or L.
    """
    _check_options(image_size, channels, split, fractions)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"class-folder dataset {path} not found: pass a folder of class folders")
    has_split_dirs = any((path / s).is_dir() for s in SPLITS)
    if split == "auto":
        split = "folders" if has_split_dirs else "classes"
    size = (int(image_size[0]), int(image_size[1]))
    params = {"size": size, "channels": channels, "split": split, "version": CACHE_VERSION}

    if split == "folders":
        if not (path / "train").is_dir():
            raise DataError(
                f"{path}/train not found: with split='folders' classes go in "
                f"{path}/train/<class>/ (and val/, test/); or use split='classes'"
            )

        def build() -> dict[str, ImageClassDataset]:
            found = [s for s in SPLITS if (path / s).is_dir()]
            return {
                s: _decode_classes(_class_dirs(path / s), size, channels, workers) for s in found
            }

        for s in SPLITS:
            if (path / s).is_dir() and not _class_dirs(path / s):
                raise DataError(
                    f"{path / s} holds no class folders: add {path / s}/<class>/ folders"
                )
        return cached("folder", [path], build, cache_dir, params) if use_cache else build()

    if has_split_dirs:
        names = ", ".join(s for s in SPLITS if (path / s).is_dir())
        raise DataError(
            f"{path} holds split folders ({names}) but split='classes' would treat them as "
            "classes: use split='folders'"
        )
    class_dirs = _class_dirs(path)
    if not class_dirs:
        raise DataError(f"{path} holds no class folders: expected {path}/<class>/<image>")
    sizes = _split_sizes(len(class_dirs), tuple(fractions), path)  # type: ignore[arg-type]

    def build_all() -> dict[str, ImageClassDataset]:
        return {"all": _decode_classes(class_dirs, size, channels, workers)}

    everything = (
        cached("folder", [path], build_all, cache_dir, params) if use_cache else build_all()
    )["all"]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(everything.num_classes, generator=generator).tolist()
    splits: dict[str, ImageClassDataset] = {}
    start = 0
    for name, count in zip(SPLITS, sizes, strict=True):
        if count > 0:
            splits[name] = select_classes(everything, sorted(order[start : start + count]))
        start += count
    return splits


def require_images_per_class(dataset: ImageClassDataset, needed: int, what: str) -> None:
    """Raise a DataError naming the classes with fewer than `needed` images.

    `what` names the need, e.g. "5-shot tasks with 1 query", giving
    "class 'cat' has 3 images; 5-shot tasks with 1 query need 6: ...".
    """
    sizes = dataset.class_sizes.tolist()
    short = [(name, n) for name, n in zip(dataset.class_names, sizes, strict=True) if n < needed]
    if not short:
        return
    fix = "add images to it or use fewer shots/queries"
    if len(short) == 1:
        name, n = short[0]
        raise DataError(f"class {name!r} has {n} images; {what} need {needed}: {fix}")
    listed = ", ".join(f"{name!r} has {n}" for name, n in short[:5])
    more = f", ... {len(short) - 5} more" if len(short) > 5 else ""
    raise DataError(
        f"{len(short)} classes have fewer than {needed} images ({listed}{more}); "
        f"{what} need {needed}: add images to them or use fewer shots/queries"
    )
