"""Dataset name -> loader: "omniglot", "miniimagenet", "folder:PATH".

Training, evaluation and the data CLI take a dataset by name; this is the one place that maps
it to a loader. Loaders are imported lazily so that loading Omniglot never imports (or fails on)
the other datasets' modules.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reptorch.data.dataset import ImageClassDataset
from reptorch.data.roots import resolve_data_root
from reptorch.errors import ConfigError

DATASETS: tuple[str, ...] = ("omniglot", "miniimagenet", "folder:PATH")
FOLDER_PREFIX = "folder:"


def _loader(module: str, function: str) -> Callable[..., dict[str, ImageClassDataset]]:
    return getattr(importlib.import_module(f"reptorch.data.{module}"), function)


def load_splits(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    val_classes: int = 0,
    cache_dir: Path | None = None,
    **options: Any,
) -> dict[str, ImageClassDataset]:
    """The splits ("train", ["val",] "test") of dataset `name` under the data root.

    `seed` fixes random class splits (Omniglot's reference split, class-split folders);
    `val_classes` carves Omniglot validation characters from training. Other keyword options go
    to the loader unchanged (e.g. `split="official"` for Omniglot).
    """
    if name == "omniglot":
        load = _loader("omniglot", "load_omniglot")
        return load(data_dir, seed=seed, val_classes=val_classes, cache_dir=cache_dir, **options)
    if val_classes:
        raise ConfigError(
            f"val_classes={val_classes} applies to Omniglot only; {name} has its own "
            f"validation split: drop the option"
        )
    if name == "miniimagenet":
        load = _loader("miniimagenet", "load_miniimagenet")
        return load(resolve_data_root(data_dir), cache_dir=cache_dir, **options)
    if name.startswith(FOLDER_PREFIX):
        folder = importlib.import_module("reptorch.data.folder")
        return folder.load_folder(
            folder.folder_path(name), seed=seed, cache_dir=cache_dir, **options
        )
    raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
