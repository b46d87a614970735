"""Does the demo's preprocessing turn real pen strokes into images like Omniglot's?

Omniglot's 28x28 images are nearest-neighbour reductions of the 105x105 scans, neither centred
nor scaled; the demo's renderings are both. To compare them, `align` moves any 28x28 image's ink
into one frame (ink bounding box centred, its longer side `ALIGNED_SIDE` pixels, sampled 4x4 per
pixel and kept where at least half is ink), and `overlap` measures the ink of two aligned images:
- IoU: |A and B| / |A or B|;
- F1 within one pixel: the harmonic mean of the share of A's ink within one pixel (8-neighbours)
  of B's and the share of B's within one pixel of A's, which forgives a line drawn one pixel
  thicker or a stroke one pixel off.
"""

from __future__ import annotations

import numpy as np

ALIGNED_SIDE = 20.0  # upscales both kinds of image: a one-pixel line never thins away
SUB = 4  # samples per pixel side


def align(image: np.ndarray, side: float = ALIGNED_SIDE) -> np.ndarray:
    """Ink (bool 28x28) of a 28x28 image (ink < 0.5), centred and scaled on its bounding box."""
    ink = np.asarray(image) < 0.5
    size = ink.shape[0]
    rows, cols = np.nonzero(ink)
    if not len(rows):
        return np.zeros_like(ink)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    centre = np.array([(top + bottom) / 2, (left + right) / 2])
    scale = side / max(bottom - top, right - left)
    # centres of the SUB x SUB samples of every output pixel, mapped back into the source
    grid = (np.arange(size * SUB) + 0.5) / SUB
    source = (grid - size / 2) / scale
    r = np.floor(source[:, None] + centre[0]).astype(int)
    c = np.floor(source[None, :] + centre[1]).astype(int)
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    sampled = np.where(inside, ink[r.clip(0, size - 1), c.clip(0, size - 1)], False)
    coverage = sampled.reshape(size, SUB, size, SUB).mean((1, 3))
    return coverage >= 0.5


def _dilate(ink: np.ndarray) -> np.ndarray:
    padded = np.pad(ink, 1)
    h, w = ink.shape
    return np.any([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(IoU, F1 within one pixel) of two ink masks."""
    union = (a | b).sum()
    iou = float((a & b).sum() / union) if union else 1.0
    recall = float((a & _dilate(b)).sum() / max(a.sum(), 1))
    precision = float((b & _dilate(a)).sum() / max(b.sum(), 1))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return iou, f1


def sample_tasks(
    characters: dict[str, list[str]], num_tasks: int, ways: int = 3, shots: int = 1, seed: int = 0
) -> list[tuple[list[list[str]], list[str]]]:
    """Few-shot tasks over drawings: [(support[c][k], query[c])] with keys of `characters`'
    drawings; the query of each class is by a drawer that drew none of its support."""
    rng = np.random.default_rng(seed)
    names = sorted(characters)
    tasks = []
    for _ in range(num_tasks):
        chosen = rng.choice(len(names), ways, replace=False)
        support, query = [], []
        for index in chosen:
            drawings = sorted(characters[names[index]])
            picked = rng.choice(len(drawings), shots + 1, replace=False)
            support.append([drawings[i] for i in picked[:shots]])
            query.append(drawings[picked[shots]])
        tasks.append((support, query))
    return tasks


def accuracy(engine, images: dict[str, np.ndarray], tasks, chunk: int = 100) -> np.ndarray:
    """Per task, the share of its queries (one per class) that the demo's engine classifies
    right (fine-tuning and prediction as `reptorch eval`, non-transductive; the most likely of
    the task's N classes)."""
    import torch

    scores = []
    for start in range(0, len(tasks), chunk):
        part = tasks[start : start + chunk]
        support = torch.as_tensor(np.array([[[images[k] for k in s] for s in t[0]] for t in part]))
        queries = torch.as_tensor(np.array([[images[k] for k in t[1]] for t in part]))
        logits, _ = engine.run(support, queries)
        ways = support.shape[1]
        predicted = logits[..., :ways].argmax(-1)
        scores.append((predicted == torch.arange(ways)).double().mean(1).numpy())
    return np.concatenate(scores)


def characters_in(drawings: dict, names: set[str]) -> dict[str, list[str]]:
    """{character: its drawings' keys} for the characters of `drawings` listed in `names`
    ('Alphabet/characterNN', e.g. the reference split's test side)."""
    characters: dict[str, list[str]] = {}
    for key in sorted(drawings):
        character = key.rsplit("/", 1)[0]
        if character in names:
            characters.setdefault(character, []).append(key)
    return characters
