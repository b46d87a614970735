"""Loading pickles that may only hold plain data: numpy arrays, lists, dicts, strings, numbers.

`pickle.load` runs whatever callables the file names (`os.system`, `builtins.eval`, ...), so a
downloaded pickle is a program. This unpickler resolves only the few globals a numpy array needs
and refuses every other one before it is imported or called, naming the file and the global.
"""

from __future__ import annotations

import codecs
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from reptorch.errors import DataError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` restricted to the latin-1 codec that protocol-2 pickles use for bytes."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) -> object: what pickled numpy arrays and plain containers reference.

    Both the numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) spellings map to the installed
    objects, so files written by either version load without importing deprecated modules.
    `_frombuffer` builds an array from bytes (protocol 5); `_codecs.encode(text, "latin1")` is
    how protocol-2 pickles store bytes, allowed for that one codec only.
    """
    table: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = _multiarray._reconstruct
        table[(module, "scalar")] = _multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = _numeric._frombuffer  # protocol 5 arrays
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    table[("_codecs", "encode")] = _latin1_encode
    table[("collections", "OrderedDict")] = collections.OrderedDict
    return table


ALLOWED_GLOBALS = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` and refuses everything else."""

    def __init__(self, file: Any, path: Path, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to load {self._path}: it references {module}.{name}, which plain data "
                "never needs (only numpy arrays, lists, dicts and strings are allowed); it may run "
                "code, so do not load it: re-create the file or use the image folders instead"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"refusing to load {self._path}: it uses persistent ids, which plain data never "
            "needs; re-create the file or use the image folders instead"
        )


def safe_load(path: Path) -> Any:
    """Unpickle `path` allowing only plain data; a DataError names the file on any failure.

    `encoding="latin1"` lets numpy arrays pickled under Python 2 load, as numpy recommends.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, path, encoding="latin1").load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied; fix its permissions") from None
    except EOFError:
        raise DataError(f"{path} is truncated (ends mid-pickle): re-download it") from None
    except MemoryError:
        raise DataError(f"{path} does not fit in memory; free memory or use the folders") from None
    except Exception as err:  # UnpicklingError, ValueError, ... from a damaged or foreign file
        raise DataError(
            f"{path} is not a readable pickle ({type(err).__name__}: {err}): re-download it"
        ) from None
