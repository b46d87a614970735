"""Where datasets live: `--data-dir`, else `$REPTORCH_DATA`, else `~/.cache/reptorch`.

One rule for every command, so `reptorch data download` puts files exactly where training looks
for them; each dataset has its own folder under the root (`<root>/omniglot/`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "REPTORCH_DATA"


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


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of dataset `name` under the resolved root, e.g. `<root>/omniglot`."""
    return resolve_data_root(data_dir) / name
