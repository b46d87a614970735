"""Loading the fast path's small C++ extensions (`csrc/`), compiled on first use.

`torch.utils.cpp_extension.load` builds each source with g++ and ninja into
~/.cache/torch_extensions (~15 s the first time, cached after) and registers its TorchScript ops
(`torch.ops.<name>.*`). Where no compiler, ninja or headers exist the caller falls back to its
pure-PyTorch path; the reason is said once.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")
_LOADED: dict[str, bool] = {}
_LOCK = threading.Lock()


def load(
    name: str,
    probe: str,
    disable: str,
    flags: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
) -> bool:
    """Whether the ops of `csrc/<sources>` (default: `<name without 'reptorch_'>.cpp`) are
    registered as `torch.ops.<name>` (built on the first call; False, said once, where they
    cannot be).

    probe: one op of the library (present when another copy of this module loaded it);
    disable: the environment variable that, set to 1, keeps the fallback; flags: extra g++ flags.
    """
    with _LOCK:
        if name not in _LOADED:
            files = sources or (name.removeprefix("reptorch_") + ".cpp",)
            _LOADED[name] = _build(name, probe, disable, flags, files)
        return _LOADED[name]


def _build(
    name: str, probe: str, disable: str, flags: tuple[str, ...], files: tuple[str, ...]
) -> bool:
    if os.environ.get(disable, "") not in ("", "0"):
        return False
    if hasattr(getattr(torch.ops, name), probe):
        return True
    try:
        from torch.utils.cpp_extension import load as build

        _put_ninja_on_path()
        _say_if_compiling(name)
        build(
            name=name,
            sources=[str(CSRC / f) for f in files],
            extra_cflags=list(flags),
            is_python_module=False,
            verbose=False,
        )
        return True
    except Exception as error:  # no compiler, no ninja, no headers: the fallback
        first = str(error).splitlines()[0] if str(error) else ""
        warnings.warn(
            f"reptorch.fast: native ops {name} unavailable ({type(error).__name__}: {first}); "
            f"using the PyTorch fallback",
            stacklevel=4,
        )
        return False


def _say_if_compiling(name: str) -> None:
    """One line on stderr when the library is about to be compiled (no up-to-date build in
    torch's extension cache), so the pause of the first use is explained."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        built = Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
        newest = max(f.stat().st_mtime for f in CSRC.iterdir())
        if built.is_file() and built.stat().st_mtime >= newest:
            return
    except Exception:  # a private helper of torch's: no message rather than an error
        return
    print(
        f"reptorch: compiling the native kernels {name} (first use after an install or "
        f"update, ~20 s; cached in {built.parent})",
        file=sys.stderr,
    )


def _put_ninja_on_path() -> None:
    """`cpp_extension` runs `ninja` from PATH: add the one the `ninja` package installed (in a
    virtual environment that is not activated, its bin folder is not on PATH)."""
    try:
        import ninja
    except ImportError:
        return
    folder = getattr(ninja, "BIN_DIR", None)
    if folder and folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([folder, os.environ.get("PATH", "")])
