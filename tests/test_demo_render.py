"""The demo's preprocessing: strokes -> 28x28 images, checked against a brute-force evaluation of
its definition, against Pillow's rasteriser (which it replaced) and against the official Omniglot
images of the same drawings. (The browser's renderer: tests/test_demo_static.py.)"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from reptorch.data.omniglot_files import decode_png
from reptorch.demo import fidelity, strokes
from reptorch.demo.render import (
    BOX_FRACTION,
    LINE_FRACTION,
    SIZE,
    RenderCache,
    normalise,
    render,
)
from reptorch.demo.server import encode
from reptorch.errors import DataError


def analytic_render(drawing, sub: int = 16) -> np.ndarray:
    """Reference: a pixel is ink when at least half of its area lies within half a line width of
    the polyline (distance to segments, sampled sub x sub per pixel), every sample against every
    segment (render() computes each segment's neighbourhood only)."""
    radius = LINE_FRACTION * SIZE / 2
    grid = (np.arange(SIZE * sub) + 0.5) / sub
    py, px = np.meshgrid(grid, grid, indexing="ij")
    near = np.zeros_like(px, dtype=bool)
    for stroke in normalise(drawing):
        segments = zip(stroke, stroke[1:]) if len(stroke) > 1 else [(stroke[0], stroke[0])]
        for a, b in segments:
            d = b - a
            length2 = float(d @ d)
            t = 0.0 if length2 == 0 else ((px - a[0]) * d[0] + (py - a[1]) * d[1]) / length2
            t = np.clip(t, 0, 1)
            near |= (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 <= radius**2
    coverage = near.reshape(SIZE, sub, SIZE, sub).mean((1, 3))
    return np.where(coverage >= 0.5, 0.0, 1.0)


def test_normalise_centres_and_scales_the_bounding_box():
    drawing = [[[0, 0], [10, 0]], [[0, 5]]]  # box 10 x 5, centre (5, 2.5)
    out = normalise(drawing)
    s = SIZE * BOX_FRACTION / 10
    expected = [
        [[14 - 5 * s, 14 - 2.5 * s], [14 + 5 * s, 14 - 2.5 * s]],
        [[14 - 5 * s, 14 + 2.5 * s]],
    ]
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want)


def pillow_render(drawing, size: int = SIZE, supersample: int = 16) -> np.ndarray:
    """The demo's earlier renderer: Pillow's round-jointed wide line plus a disc at every point,
    at 16x, box-averaged, binarised at half coverage."""
    from PIL import Image, ImageDraw

    big = size * supersample
    width = LINE_FRACTION * big
    radius = width / 2
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in normalise(drawing, size):
        points = [tuple(p) for p in stroke * supersample]
        if len(points) > 1:
            draw.line(points, fill=255, width=max(1, round(width)), joint="curve")
        for x, y in points:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    coverage = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return np.where(coverage >= 127.5, 0.0, 1.0).astype(np.float32)


def test_render_matches_the_analytic_rasteriser():
    drawings = [
        [[[0, 0], [100, 0]]],  # a horizontal line
        [[[0, 0], [40, 90], [80, 0]], [[20, 45], [60, 45]]],  # an A
        [[[50 + 40 * np.cos(a), 50 + 40 * np.sin(a)] for a in np.linspace(0, 6.3, 60)]],
        [[[3, 3]]],  # a lone dot: 1.4 pixels wide, centred on a pixel corner, under half of any
    ]
    for drawing in drawings:
        got, want = render(drawing), analytic_render(drawing)
        assert got.shape == (28, 28) and got.dtype == np.float32
        assert set(np.unique(got)) <= {0.0, 1.0}
        np.testing.assert_array_equal(got, want)  # the same definition, computed exhaustively
        # Pillow's polygons and ellipses: pixels covered almost exactly half may fall either way
        assert (got != pillow_render(drawing)).sum() <= 3, (got != pillow_render(drawing)).sum()


def test_render_ignores_position_and_size_and_keeps_the_line_width():
    line = [[[0, 0], [100, 0]]]
    image = render(line)
    assert (render([[[7 + 3 * x, -2 + 3 * y] for x, y in line[0]]]) == image).all()
    rows = np.flatnonzero((image < 0.5).any(1))
    assert rows.tolist() == [13, 14]  # y = 14 +- 0.7: each row 70% covered
    cols = np.flatnonzero((image < 0.5).any(0))  # x from 14 -+ 7.37, caps of radius 0.7
    assert cols.tolist() == list(range(6, 22))


def test_render_cache_returns_the_rendered_image_and_evicts_the_oldest():
    cache = RenderCache(size=2)
    line, bend = [[[0, 0], [10, 0], [10, 5]]], [[[0, 0], [10, 0]], [[10, 0], [10, 5]]]
    first = cache(line)
    np.testing.assert_array_equal(first, render(line))
    assert cache(line) is first and not first.flags.writeable
    assert cache(bend) is not first  # the same points split into two strokes: another drawing
    np.testing.assert_array_equal(cache(bend), render(bend))
    cache([[[0, 0], [0, 9]]])  # a third drawing pushes out the least recently used (line)
    assert cache(line) is not first


def test_encode_marks_ink_as_ones_row_major():
    image = np.ones((28, 28), np.float32)
    image[0, 1] = image[27, 27] = 0.0
    text = encode(image)
    assert len(text) == 784 and text == "".join("1" if v < 0.5 else "0" for v in image.ravel())
    assert [i for i, ch in enumerate(text) if ch == "1"] == [1, 783]


def test_empty_drawing_is_refused():
    with pytest.raises(ValueError):
        render([])
    with pytest.raises(ValueError):
        render([[]])


def test_parse_stroke_file():
    text = "START\n1.5,-2,0\n3,-4,10\nBREAK\n5,-6,20\nBREAK\n"
    assert strokes.parse(text) == [[[1.5, 2.0], [3.0, 4.0]], [[5.0, 6.0]]]
    with pytest.raises(DataError, match="line 2"):
        strokes.parse("START\nnot,a number\n", "x.txt")
    with pytest.raises(DataError, match="no pen samples"):
        strokes.parse("START\nBREAK\n")


def test_align_and_overlap_by_hand():
    image = np.ones((28, 28), np.float32)
    image[2:4, 2:12] = 0  # a 10 x 2 bar in a corner
    aligned = fidelity.align(image, side=20)
    rows, cols = np.nonzero(aligned)
    assert (cols.min(), cols.max()) == (4, 23)  # 20 wide, centred
    assert (rows.min(), rows.max()) == (12, 15)  # 4 high, centred
    a = np.zeros((28, 28), bool)
    a[10, 5:15] = True
    b = np.roll(a, 1, axis=0)  # one pixel off: no IoU, full F1 within one pixel
    assert fidelity.overlap(a, a) == (1.0, 1.0)
    assert fidelity.overlap(a, b) == (0.0, 1.0)


def test_rendered_strokes_look_like_the_official_images(omniglot_strokes, omniglot_dir):
    """All 3,120 drawings: rendered and official images agree once aligned, far better than two
    drawers of the same character do; the line width gives the official amount of ink."""
    drawings = strokes.read_zip(omniglot_strokes)
    assert len(drawings) == 3120
    rng = np.random.default_rng(0)
    own, other, ink = [], [], []
    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as archive:
        official = {
            k: decode_png(archive.read(f"images_background/{k}.png"), k) / 255.0 for k in drawings
        }
    for key, drawing in drawings.items():
        rendered = render(drawing)
        character = key.rsplit("/", 1)[0]
        mates = [k for k in drawings if k.startswith(character + "/") and k != key]
        mate = mates[rng.integers(len(mates))]
        aligned = fidelity.align(official[key])
        own.append(fidelity.overlap(fidelity.align(rendered), aligned))
        other.append(fidelity.overlap(fidelity.align(official[mate]), aligned))
        ink.append(((rendered < 0.5).sum(), (official[key] < 0.5).sum()))
    own, other, ink = np.array(own), np.array(other), np.array(ink)
    assert own[:, 1].mean() > 0.97  # measured 0.992 (F1 within one pixel)
    assert own[:, 0].mean() > other[:, 0].mean() + 0.25  # IoU: measured 0.62 vs 0.26
    ratio = ink[:, 0].sum() / ink[:, 1].sum()
    assert 0.9 < ratio < 1.1  # measured 1.00
