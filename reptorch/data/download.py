"""`reptorch data download omniglot`: fetch, verify and install the two official archives.

Each file is streamed to a temporary file beside its destination and renamed into place only
after it verified (complete length, a zip and not an HTML page, every member's CRC, the official
layout and image count), so an interrupted or bogus download never leaves a file that a later
load would trust. Only urllib: no extra dependency. The base address can be overridden with
`$REPTORCH_OMNIGLOT_URL` (a mirror, or a local server in tests).
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from reptorch.data.cache import writable_target
from reptorch.data.omniglot_files import EXPECTED, PARTS, zip_entries
from reptorch.errors import DataError

OMNIGLOT_URL_ENV = "REPTORCH_OMNIGLOT_URL"
OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
_CHUNK = 1 << 16


def omniglot_base_url(base_url: str | None = None) -> str:
    """The address the archives are fetched from: argument, else the env var, else GitHub."""
    return (base_url or os.environ.get(OMNIGLOT_URL_ENV) or OMNIGLOT_URL).rstrip("/")


def _manual_hint(directory: Path) -> str:
    names = " and ".join(f"{stem}.zip" for stem in PARTS.values())
    return f"download {names} from {OMNIGLOT_URL}/ by hand and put them in {directory.resolve()}"


def looks_like_html(path: Path) -> bool:
    """True if the file starts like an HTML/XML page (an error or login page saved as data)."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<head", b"<?xml")) or b"<html" in head


def verify_omniglot_zip(path: Path, part: str, origin: str | None = None) -> int:
    """Check one archive (zip, CRCs, `images_<part>/<Alphabet>/<character>/*.png`, image count);
    returns the image count or raises `DataError` naming `origin` (the URL) or the file."""
    what = origin or str(path)
    if looks_like_html(path):
        raise DataError(f"{what} is an HTML page, not a zip (an error or login page)")
    try:
        archive, entries = zip_entries(path)
    except DataError as err:
        raise DataError(f"{what}: {err}") from None
    with archive:
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
            bad = f"({err})"
        if bad is not None:
            raise DataError(f"{what} is corrupt: member {bad} fails its CRC check")
        top = {member.split("/")[0] for *_, member in entries}
    stem = PARTS[part]
    if top != {stem}:
        raise DataError(f"{what} does not hold {stem}/<Alphabet>/<character>/*.png (found {top})")
    expected = EXPECTED[part][2]
    if len(entries) != expected:
        raise DataError(f"{what} holds {len(entries)} images, expected {expected} (incomplete)")
    return len(entries)


def fetch(
    url: str, dest: Path, progress: bool = True, timeout: float = 60.0, hint: str | None = None
) -> Path:
    """Stream `url` to a temporary file beside `dest` (with a progress bar); returns the temp
    path, complete as far as Content-Length can tell. Removes it on any failure. `hint` says
    what to do when the address cannot be reached (default: Omniglot's manual download)."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "reptorch"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            raise DataError(f"{url} answered HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise DataError(
                f"cannot reach {url} ({reason}): offline? {hint or _manual_hint(dest.parent)}"
            ) from None
        with response, os.fdopen(fd, "wb") as out:
            fd = -1
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            received = 0
            with tqdm(
                total=length, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as err:
                    raise DataError(
                        f"download of {url} broke off after {received} bytes ({err}): run the "
                        f"command again"
                    ) from None
        if length is not None and received != length:
            raise DataError(
                f"download of {url} was cut off: {received} of {length} bytes received; run the "
                f"command again"
            )
        return tmp
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def _extract(zip_path: Path, directory: Path, part: str) -> Path:
    """Extract the verified images into `directory/images_<part>/` via a temporary folder."""
    target = directory / PARTS[part]
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{PARTS[part]}.", suffix=".extract"))
    try:
        archive, entries = zip_entries(zip_path)
        with archive:
            for alphabet, character, member in entries:
                out = staging / PARTS[part] / alphabet / character / Path(member).name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.read(member))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / PARTS[part], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_omniglot(
    directory: Path,
    base_url: str | None = None,
    extract: bool = False,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Install `images_background.zip` and `images_evaluation.zip` in `directory` (the
    `<root>/omniglot` folder); with `extract`, the extracted folders instead of the zips.
    Parts already present and valid are kept unless `force`. Returns part -> installed path."""
    base = omniglot_base_url(base_url)
    writable_target(directory)
    installed: dict[str, Path] = {}
    for part, stem in PARTS.items():
        zip_path, folder = directory / f"{stem}.zip", directory / stem
        if not force and folder.is_dir() and not zip_path.exists():
            log(f"{folder} already present (use --force to download again)")
            installed[part] = folder
            continue
        if not force and zip_path.is_file():
            try:
                verify_omniglot_zip(zip_path, part)
            except DataError as err:
                log(f"{zip_path} is not valid ({err}); downloading it again")
            else:
                if extract:
                    installed[part] = _extract(zip_path, directory, part)
                    zip_path.unlink()
                else:
                    installed[part] = zip_path
                log(f"{installed[part]} already present and verified")
                continue
        url = f"{base}/{stem}.zip"
        tmp = fetch(url, zip_path, progress=progress)
        try:
            images = verify_omniglot_zip(tmp, part, origin=url)
            if extract:
                installed[part] = _extract(tmp, directory, part)
                zip_path.unlink(missing_ok=True)
            else:
                os.replace(tmp, zip_path)
                installed[part] = zip_path
        finally:
            tmp.unlink(missing_ok=True)
        log(f"{installed[part]}: {images} images verified")
    return installed
