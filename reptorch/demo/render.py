"""Drawings to network inputs, as the demo of the Reptile post did (paper-reference section 8).

A drawing is a list of strokes, each a list of (x, y) points in any frame whose y grows downward
(canvas pixels). It becomes one 28x28 Omniglot-like image:
- centred on the bounding box of its points: the box centre goes to the image centre;
- scaled so that the box's longer side is 1/1.9 of the image side (28 / 1.9 = 14.7 pixels);
- stroked with a round-capped, round-jointed line 5% of the image wide (1.4 pixels);
- rasterised at 16x and box-averaged to 28x28, then binarised at half coverage:
  ink 0.0, background 1.0, as Omniglot images are fed to the network.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

SIZE = 28  # the network's input side
BOX_FRACTION = 1 / 1.9  # longer side of the drawing's bounding box / image side
LINE_FRACTION = 0.05  # line width / image side
SUPERSAMPLE = 16  # rasterisation at SIZE * SUPERSAMPLE, then box-averaged down

Point = Sequence[float]
Stroke = Sequence[Point]
Drawing = Sequence[Stroke]


def normalise(drawing: Drawing, size: int = SIZE) -> list[np.ndarray]:
    """The strokes moved into the image frame (pixel units, origin top-left, y downward).

    p' = (p - c) * s + size / 2, with c the centre of the points' bounding box and
    s = size * BOX_FRACTION / (longer side of the box); a single point lands at the centre.
    """
    strokes = [np.asarray(stroke, dtype=np.float64).reshape(-1, 2) for stroke in drawing]
    strokes = [s for s in strokes if len(s)]
    if not strokes:
        raise ValueError("a drawing needs at least one point")
    points = np.concatenate(strokes)
    low, high = points.min(0), points.max(0)
    centre, longer = (low + high) / 2, float((high - low).max())
    scale = size * BOX_FRACTION / longer if longer > 0 else 1.0
    return [(s - centre) * scale + size / 2 for s in strokes]


def render(drawing: Drawing, size: int = SIZE) -> np.ndarray:
    """The network input for a drawing: float32 (size, size), ink 0.0 and background 1.0."""
    big = size * SUPERSAMPLE
    width = LINE_FRACTION * big
    radius = width / 2
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in normalise(drawing, size):
        points = [tuple(p) for p in stroke * SUPERSAMPLE]
        if len(points) > 1:
            draw.line(points, fill=255, width=max(1, round(width)), joint="curve")
        for x, y in points:  # round caps and joints: a disc at every point
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    coverage = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return np.where(coverage >= 127.5, 0.0, 1.0).astype(np.float32)


class RenderCache:
    """`render` with the last `size` drawings' images kept, keyed by a digest of their points.

    The page resends the unchanged support drawings with every stroke of the query; rendering
    25 of them takes ~17 ms, looking them up well under 1 ms. Thread-safe; the images returned
    are read-only.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._images: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, drawing: Drawing) -> np.ndarray:
        digest = hashlib.sha256()
        for stroke in drawing:
            digest.update(np.asarray(stroke, dtype=np.float64).tobytes())
            digest.update(b"|")  # stroke boundary: the same points split differently differ
        key = digest.digest()
        with self._lock:
            image = self._images.pop(key, None)
        if image is None:
            image = render(drawing)
            image.setflags(write=False)
        with self._lock:
            self._images[key] = image
            while len(self._images) > self.size:
                self._images.popitem(last=False)
        return image
