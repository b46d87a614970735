"""Drawings to network inputs, as the demo of the Reptile post did (paper-reference section 8).

A drawing is a list of strokes, each a list of (x, y) points in any frame whose y grows downward
(canvas pixels). It becomes one 28x28 Omniglot-like image:
- centred on the bounding box of its points: the box centre goes to the image centre;
- scaled so that the box's longer side is 1/1.9 of the image side (28 / 1.9 = 14.7 pixels);
- stroked with a round-capped, round-jointed line 5% of the image wide (1.4 pixels);
- sampled 16 x 16 per pixel, then binarised at half coverage: ink 0.0, background 1.0, as
  Omniglot images are fed to the network.

The line is defined analytically, not by a graphics library: a sample point is ink when its
distance to a segment of a stroke (a lone point: a zero-length segment) is at most half the line
width, computed in float64 with the operations, in the order, written in `_ink_samples`. The
browser's renderer (`static/render.js`) performs the same operations, so both give the same
images bit for bit (tests/test_demo_static.py); Pillow's rasteriser, used before, differs from
this definition on up to 3 borderline pixels (tests/test_demo_render.py).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

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
    """The network input for a drawing: float32 (size, size), ink 0.0 and background 1.0.

    A pixel is ink when at least half of its SUPERSAMPLE x SUPERSAMPLE sample points (at
    ((i + 0.5) / SUPERSAMPLE) pixels) are ink (`_ink_samples`).
    """
    samples = size * SUPERSAMPLE
    ink = np.zeros((samples, samples), dtype=bool)
    starts, ends = [], []
    for stroke in normalise(drawing, size):
        # a lone point is the segment from it to itself (a disc)
        starts.append(stroke[:-1] if len(stroke) > 1 else stroke)
        ends.append(stroke[1:] if len(stroke) > 1 else stroke)
    _ink_samples(ink, np.concatenate(starts), np.concatenate(ends), LINE_FRACTION * size / 2)
    count = ink.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).sum((1, 3))
    return np.where(2 * count >= SUPERSAMPLE * SUPERSAMPLE, 0.0, 1.0).astype(np.float32)


WINDOW = 48  # samples: segments whose neighbourhood fits WINDOW x WINDOW are done together
CHUNK = 256  # segments computed at once


def _ink_samples(ink: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> None:
    """Marks the sample points within `radius` of the segments a[i]-b[i] (image pixels).

    The definition both renderers share (static/render.js `inkSegment` does the same float64
    operations in the same order): d = b - a; t = ((q - a) . d) / |d|^2 clipped to [0, 1]
    (0 when |d| = 0); ink when (qx - ax - t dx)^2 + (qy - ay - t dy)^2 <= radius^2. Only the
    samples of a segment's bounding box widened by radius plus one sample spacing are computed:
    the others are farther than radius, so the union is unchanged. Short segments (pen samples
    are dense) are computed CHUNK at a time in WINDOW x WINDOW windows, the rest one by one.
    """
    samples = ink.shape[0]
    margin = radius + 1 / SUPERSAMPLE
    x0, x1 = _window(
        np.minimum(a[:, 0], b[:, 0]) - margin, np.maximum(a[:, 0], b[:, 0]) + margin, samples
    )
    y0, y1 = _window(
        np.minimum(a[:, 1], b[:, 1]) - margin, np.maximum(a[:, 1], b[:, 1]) + margin, samples
    )
    small = (x1 - x0 < WINDOW) & (y1 - y0 < WINDOW)
    steps = np.arange(WINDOW)
    for chunk in np.array_split(np.flatnonzero(small), max(1, -(-int(small.sum()) // CHUNK))):
        if not len(chunk):
            continue
        width = int(max((x1 - x0)[chunk].max(), (y1 - y0)[chunk].max())) + 1
        xs = x0[chunk, None] + steps[:width]  # (S, width) sample columns
        ys = y0[chunk, None] + steps[:width]
        inside = (xs[:, None, :] <= x1[chunk, None, None]) & (
            ys[:, :, None] <= y1[chunk, None, None]
        )
        near = _near(a[chunk], b[chunk], (xs + 0.5) / SUPERSAMPLE, (ys + 0.5) / SUPERSAMPLE, radius)
        hit = near & inside
        rows = np.broadcast_to(ys[:, :, None], hit.shape)[hit]
        cols = np.broadcast_to(xs[:, None, :], hit.shape)[hit]
        ink[rows, cols] = True
    for i in np.flatnonzero(~small):
        if x0[i] > x1[i] or y0[i] > y1[i]:
            continue  # off the image
        qx = (np.arange(x0[i], x1[i] + 1) + 0.5) / SUPERSAMPLE
        qy = (np.arange(y0[i], y1[i] + 1) + 0.5) / SUPERSAMPLE
        near = _near(a[i : i + 1], b[i : i + 1], qx[None], qy[None], radius)[0]
        ink[y0[i] : y1[i] + 1, x0[i] : x1[i] + 1] |= near


def _near(
    a: np.ndarray, b: np.ndarray, qx: np.ndarray, qy: np.ndarray, radius: float
) -> np.ndarray:
    """(S, Y, X): whether sample (qy[s, y], qx[s, x]) lies within radius of segment s."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
    qx, qy = qx[:, None, :], qy[:, :, None]
    length2 = dx * dx + dy * dy
    degenerate = length2 == 0
    t = ((qx - ax) * dx + (qy - ay) * dy) / np.where(degenerate, 1.0, length2)
    t = np.where(degenerate, 0.0, np.minimum(np.maximum(t, 0.0), 1.0))
    ex = qx - ax - t * dx
    ey = qy - ay - t * dy
    return ex * ex + ey * ey <= radius * radius


def _window(low: np.ndarray, high: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last sample index whose coordinate (i + 0.5) / SUPERSAMPLE lies in
    [low, high], clipped to the image (first > last when none does)."""
    first = np.maximum(0, np.ceil(low * SUPERSAMPLE - 0.5)).astype(np.int64)
    last = np.minimum(samples - 1, np.floor(high * SUPERSAMPLE - 0.5)).astype(np.int64)
    return first, last


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
