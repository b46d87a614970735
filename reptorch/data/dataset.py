"""One split of an image-classification dataset, held in memory, grouped by class."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageClassDataset:
    """All images of one split as one uint8 tensor, grouped by class.

    Images of class `c` are `images[class_offsets[c]:class_offsets[c + 1]]`; the value fed to a
    network is `images.float() / 255`, so Omniglot's background is exactly 1.0 and ink 0.0.
    Sampling a task is then a few indexing operations on one tensor.
    """

    images: torch.Tensor  # uint8 (num_images, C, H, W)
    class_offsets: torch.Tensor  # int64 (num_classes + 1,), starts at 0, ends at num_images
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 tensor (num_images, C, H, W)")
        if self.class_offsets.dim() != 1 or len(self.class_offsets) != len(self.class_names) + 1:
            raise ValueError("class_offsets must have num_classes + 1 entries")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_sizes(self) -> torch.Tensor:
        """Images per class, int64 (num_classes,)."""
        return self.class_offsets[1:] - self.class_offsets[:-1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.images.shape[0]

    def classes_digest(self) -> str:
        """sha256 (16 hex digits) of the class names and sizes, in order: the seeded task list of
        an evaluation is a function of these and its settings, so two evaluations with equal
        digests and settings scored the same tasks (`reptorch compare` pairs them)."""
        digest = hashlib.sha256()
        for name, size in zip(self.class_names, self.class_sizes.tolist()):
            digest.update(f"{name}\t{size}\n".encode())
        return digest.hexdigest()[:16]
