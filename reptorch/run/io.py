"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

A reader (or a resumed run) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any, inline: tuple[str, ...] = ()) -> None:
    """`value` as indented JSON; the top-level keys in `inline` (long lists: an evaluation's
    per-task scores) each on one line, so that the file stays readable and diffs stay short."""
    shown = dict(value) if inline else value
    placeholders = {}
    for key in inline:
        if key in shown:
            placeholders[f"@inline:{key}@"] = json.dumps(shown[key], separators=(",", ":"))
            shown[key] = f"@inline:{key}@"
    text = json.dumps(shown, indent=2, sort_keys=True)
    for placeholder, compact in placeholders.items():
        text = text.replace(json.dumps(placeholder), compact, 1)
    atomic_write_bytes(path, (text + "\n").encode())
