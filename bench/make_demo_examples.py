"""Writes the demo's example drawings (reptorch/demo/examples/) from the Omniglot stroke archive.

Five characters of the reference split's test side (never seen in meta-training), six drawers
each, in the stroke-file format, simplified (Ramer-Douglas-Peucker, 0.5 pixel of the 105x105
frame; coordinates to 0.1 pixel) so that all of them take a few KB.

    python -m bench.make_demo_examples ../shared/data/omniglot-strokes/strokes_background_small2.zip
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import numpy as np

from reptorch.demo.server import EXAMPLES

CHARACTERS = (
    "Greek/character01",
    "Japanese_(katakana)/character14",
    "Latin/character06",
    "Sanskrit/character13",
    "Tagalog/character11",
)
DRAWINGS = 6
TOLERANCE = 0.5


def simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker: the fewest points within `tolerance` of the polyline."""
    if len(points) < 3:
        return points
    start, end = points[0], points[-1]
    direction = end - start
    length = np.hypot(*direction)
    if length == 0:
        distances = np.hypot(*(points - start).T)
    else:
        offset = points - start
        distances = np.abs(direction[0] * offset[:, 1] - direction[1] * offset[:, 0]) / length
    index = int(distances.argmax())
    if distances[index] <= tolerance:
        return np.stack([start, end])
    left = simplify(points[: index + 1], tolerance)
    return np.concatenate([left[:-1], simplify(points[index:], tolerance)])


def rewrite(text: str) -> str:
    """A stroke file with each stroke simplified (times kept for the points that remain)."""
    lines, stroke = ["START"], []

    def flush() -> None:
        if stroke:
            rows = np.array(stroke)
            kept = simplify(rows[:, :2], TOLERANCE)
            for x, y in kept:
                t = rows[np.flatnonzero((rows[:, 0] == x) & (rows[:, 1] == y))[0], 2]
                lines.append(f"{x:.1f},{y:.1f},{t:.0f}")
            lines.append("BREAK")
        stroke.clear()

    for line in text.splitlines():
        line = line.strip()
        if line == "BREAK":
            flush()
        elif line and line != "START":
            stroke.append([float(v) for v in line.split(",")[:3]])
    flush()
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="strokes_background_small2.zip")
    args = parser.parse_args()
    with zipfile.ZipFile(args.archive) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".txt") and "MACOSX" not in n)
        for character in CHARACTERS:
            folder = EXAMPLES / character.replace("/", "_")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            files = [n for n in names if f"/{character}/" in n][:DRAWINGS]
            for name in files:
                text = rewrite(archive.read(name).decode())
                (folder / Path(name).name).write_text(text)
    size = sum(p.stat().st_size for p in EXAMPLES.rglob("*.txt"))
    print(f"{len(CHARACTERS) * DRAWINGS} drawings, {size} bytes in {EXAMPLES}")


if __name__ == "__main__":
    main()
