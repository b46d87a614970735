"""Omniglot pen strokes (Lake et al. 2015): the trajectories the character images were drawn from.

A stroke file holds `START`, then one `x,y,t` line per pen sample, strokes separated by `BREAK`;
x and y are in the 105x105 image's pixel frame with y negative (image row = -y). `parse` turns it
into a drawing in canvas convention (y downward), the form `reptorch.demo.render` takes.
`read_zip` reads a stroke archive (`strokes_background_small2.zip`) keyed like the images,
`Alphabet/characterNN/XXXX_YY`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from reptorch.errors import DataError

Drawing = list[list[list[float]]]


def parse(text: str, name: str = "stroke file") -> Drawing:
    """[[ [x, y], ... ] per stroke] in image pixels, y downward; the time stamps are dropped."""
    strokes: Drawing = []
    current: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line in ("", "START"):
            continue
        if line == "BREAK":
            if current:
                strokes.append(current)
            current = []
            continue
        try:
            x, y = (float(v) for v in line.split(",")[:2])
        except ValueError:
            raise DataError(f"{name} line {number}: expected x,y,t, got {line[:40]!r}") from None
        current.append([x, -y])
    if current:
        strokes.append(current)
    if not strokes:
        raise DataError(f"{name} holds no pen samples: not an Omniglot stroke file")
    return strokes


def read_zip(path: Path) -> dict[str, Drawing]:
    """{'Alphabet/characterNN/XXXX_YY': drawing} for every stroke file of an archive."""
    drawings = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.namelist():
                parts = entry.split("/")
                if "__MACOSX" in parts or not entry.endswith(".txt") or len(parts) < 3:
                    continue
                key = "/".join(parts[-3:])[: -len(".txt")]
                drawings[key] = parse(archive.read(entry).decode(), f"{path}:{entry}")
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"cannot read the stroke archive {path}: {error}") from None
    if not drawings:
        raise DataError(f"{path} holds no Omniglot stroke files (<alphabet>/<character>/*.txt)")
    return drawings


EXAMPLES = Path(__file__).parent / "examples"  # shipped drawings, one folder per character


def load_examples() -> dict[str, Any]:
    """The shipped example drawings: {"source", "classes": [{"name", "drawings"}]}."""
    classes = []
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.txt"))
        drawings = [parse(f.read_text(), f.name) for f in files]
        classes.append({"name": folder.name, "drawings": drawings})
    return {"source": (EXAMPLES / "README.md").read_text().splitlines()[0], "classes": classes}
