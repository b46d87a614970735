"""Where datasets live: `--data-dir`, else `$REPTORCH_DATA`, else `~/.cache/reptorch`.

One rule for every command, so `reptorch data download` puts files exactly where training looks
for them; each dataset has its own folder under the root (`<root>/omniglot/`, ...).

The commonest slip, `--data-dir` naming the dataset's own folder (`DATA/omniglot` rather than
`DATA`), is forgiven: a root that holds the dataset's files itself, or is named after it and has
no folder of that name inside, is used as the dataset's folder (`dataset_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "REPTORCH_DATA"

# What a dataset's own folder holds at its top (any one suffices): tells it from a data root.
OWN_FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "omniglot": (
        "images_background.zip",
        "images_evaluation.zip",
        "images_background",
        "images_evaluation",
    ),
    "miniimagenet": (
        "train",
        "val",
        "test",
        "images",
        "mini-imagenet-cache-train.pkl",
        "mini-imagenet-cache-val.pkl",
        "mini-imagenet-cache-test.pkl",
    ),
    "tabular": ("keel",),
}


def default_data_root() -> Path:
    """`~/.cache/reptorch`: the root when neither `--data-dir` nor `$REPTORCH_DATA` is set."""
    return Path.home() / ".cache" / "reptorch"


def resolve_data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the explicit argument, else `$REPTORCH_DATA`, else the default."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "")
    if env:
        return Path(env).expanduser()
    return default_data_root()


def root_origin(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Which rule chose the root, for messages ("--data-dir", "$REPTORCH_DATA", "default")."""
    if data_dir is not None and str(data_dir) != "":
        return "--data-dir"
    if os.environ.get(DATA_ENV, ""):
        return f"${DATA_ENV}"
    return "default root"


def is_dataset_folder(path: Path, name: str) -> bool:
    """Whether `path` is dataset `name`'s own folder rather than a data root: it holds the
    dataset's files (`OWN_FOLDER_MARKERS`), or it is named `name` and has no `name/` inside."""
    if (path / name).exists():
        return False
    if path.name == name:
        return True
    return any((path / marker).exists() for marker in OWN_FOLDER_MARKERS.get(name, ()))


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of dataset `name`: `<root>/<name>`, or the root itself when it is the
    dataset's own folder (`--data-dir DATA/omniglot` for `--data-dir DATA`)."""
    root = resolve_data_root(data_dir)
    return root if is_dataset_folder(root, name) else root / name
