"""Decoding image files into uint8 arrays, with one-line errors that name the bad file.

Real downloads fail in a few typical ways (empty file, HTML error page saved under an image's
name, truncated JPEG, unreadable file); each becomes a `DataError` naming the file and the fix
instead of a Pillow traceback, and decoding never silently carries on with a half-decoded image.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from reptorch.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


def is_image_name(name: str) -> bool:
    """True for a visible file whose extension is an image format (case-insensitive)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageSource:
    """One image to decode: a name for messages and a callable returning its bytes."""

    name: str
    read: Callable[[], bytes]


def file_source(path: Path) -> ImageSource:
    """An image file on disk."""
    return ImageSource(str(path), Path(path).read_bytes)


class ZipReader:
    """Reads members of one zip file; a lock makes it safe to share across decoding threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(
                f"{self.path} is not a readable zip file ({err}): re-download it"
            ) from None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return self._zip.namelist()

    def source(self, member: str) -> ImageSource:
        def read() -> bytes:
            with self._lock:
                return self._zip.read(member)

        return ImageSource(f"{self.path}:{member}", read)

    def close(self) -> None:
        self._zip.close()


def _describe_bad_bytes(data: bytes) -> str | None:
    """Why `data` cannot be an image, when that is visible from the bytes alone."""
    if not data:
        return "is empty (0 bytes), an interrupted download"
    head = data[:512].lstrip().lower()
    if any(head.startswith(marker) for marker in _HTML_MARKERS) or b"<html" in head:
        return "is an HTML/XML page, not an image (an error page saved under the image's name)"
    return None


def decode_image(data: bytes, name: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode `data` to a uint8 array (channels, H, W) of `size` = (H, W).

    Follows the reference Mini-ImageNet loader: resize in the file's own mode with Pillow's
    bicubic filter (its default since Pillow 7), then convert to RGB or L. Palette and 1-bit
    images are converted first, since Pillow resizes those modes with nearest neighbour only.
    """
    reason = _describe_bad_bytes(data)
    if reason is not None:
        raise DataError(f"{name} {reason}: re-download or delete it")
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes now, so a truncated file fails here, not later
            if img.mode in ("1", "P", "PA"):
                img = img.convert(mode)
            height, width = size
            if img.size != (width, height):
                img = img.resize((width, height), resample=Image.Resampling.BICUBIC)
            if img.mode != mode:
                img = img.convert(mode)
            array = np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(
            f"{name} is not an image Pillow can read: re-download or delete it"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{name} is truncated or corrupt ({err}): re-download or delete it"
        ) from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array.transpose(2, 0, 1)


def _read(source: ImageSource) -> bytes:
    try:
        return source.read()
    except PermissionError:
        raise DataError(
            f"cannot read {source.name}: permission denied; fix its permissions"
        ) from None
    except FileNotFoundError:
        raise DataError(f"{source.name} disappeared while loading: re-run the command") from None
    except (OSError, zipfile.BadZipFile, RuntimeError) as err:
        raise DataError(f"cannot read {source.name} ({err}): re-download it") from None


def default_workers() -> int:
    """Decoding threads: Pillow releases the GIL while decoding, so threads scale."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_images(
    sources: Sequence[ImageSource],
    size: tuple[int, int],
    channels: int,
    workers: int | None = None,
) -> torch.Tensor:
    """Decode all `sources` into one uint8 tensor (N, channels, H, W), in order, in threads."""
    out = torch.empty((len(sources), channels, *size), dtype=torch.uint8)
    target = out.numpy()

    def work(i: int) -> None:
        source = sources[i]
        target[i] = decode_image(_read(source), source.name, size, channels)

    workers = workers or default_workers()
    if workers == 1 or len(sources) < 64:
        for i in range(len(sources)):
            work(i)
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for _ in pool.map(work, range(len(sources))):
                pass
        finally:  # on the first bad file, drop the queued work instead of decoding it all
            pool.shutdown(wait=True, cancel_futures=True)
    return out
