"""`reptorch data download miniimagenet`: a public copy, verified image by image, in Ravi's layout.

The default source is the GitHub repository `Deo0330/split_minidataset` at a pinned commit (its
`train/` and `val/` hold a per-class 500/100 re-split of all 100 classes under Ravi's file
names); `--url` (or `$REPTORCH_MINIIMAGENET_URL`) names any other zip or tar, `--archive` a local
one. Images are found by file name anywhere in the archive, so the reference code's split folders
or Ravi's `images/` work as well.

Every image is checked against the manifest shipped with reptorch (`miniimagenet_manifest`)
while it is extracted into a hidden staging folder; only when all 60,000 match are the split CSVs
written (from the manifest) and the staging folder renamed to `images/`. Anything else (an HTML
page, a truncated archive, a missing or damaged image) is one line naming the files and classes
at fault, and nothing is installed: a later load never trusts a half-written set.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from reptorch.data.cache import writable_target
from reptorch.data.download import fetch, looks_like_html
from reptorch.data.miniimagenet_layouts import PICKLE_NAME
from reptorch.data.miniimagenet_manifest import (
    ARCHIVE_URL,
    SPLITS,
    Manifest,
    Verdict,
    load_manifest,
    split_csv,
    verify,
)
from reptorch.errors import DataError

MINIIMAGENET_URL_ENV = "REPTORCH_MINIIMAGENET_URL"
# Hidden work folders beside images/ (no loader looks at them): the staging and the old copy.
_PREFIX, _STAGING, _OLD = ".images.", ".partial", ".old"
_ARCHIVE = "miniimagenet-archive"  # the download's temporary file: .miniimagenet-archive.*.part
_TMP = ".tmp"  # a split CSV being written: .train.csv.<pid>.tmp


def miniimagenet_url(url: str | None = None) -> str:
    """The archive's address: argument, else the env var, else the pinned GitHub archive."""
    return url or os.environ.get(MINIIMAGENET_URL_ENV) or ARCHIVE_URL


def _members(path: Path, origin: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(member name, read) for each regular file of a zip or tar (gzip/bz2/xz) archive."""
    if looks_like_html(path):
        raise DataError(
            f"{origin} is an HTML page, not an archive (an error or login page saved as the "
            "download): check the address, or download the archive by hand and pass --archive"
        )
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise DataError(
            f"{origin} is a zip cut off before its end ({path.stat().st_size} bytes, no central "
            "directory): the download was interrupted; download it again"
        )
    if zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"{origin} is not a readable zip ({err}): download it again") from None
        with archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, functools.partial(archive.read, info)
        return
    try:
        with tarfile.open(path, "r:*") as archive:
            for info in archive:
                if info.isfile():
                    yield info.name, functools.partial(_read_tar_member, archive, info)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        size = path.stat().st_size
        raise DataError(
            f"{origin} ({size} bytes) is not a complete zip or tar archive ({err}): the download "
            "was cut off or is not an archive; download it again"
        ) from None


def _read_tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(info)
    if handle is None:
        raise tarfile.TarError(f"{info.name} is not a regular file")
    return handle.read()


def extract_verified(
    path: Path, origin: str, manifest: Manifest, staging: Path, progress: bool = True
) -> Verdict:
    """Write every image of the archive that the manifest lists and whose digest matches into
    `staging`; returns the verdict on all of them (unreadable members count as corrupt)."""
    digests: dict[str, str | None] = {}
    with tqdm(total=len(manifest.files), unit="img", desc="verify", disable=not progress) as bar:
        for member, read in _members(path, origin):
            name = member.rsplit("/", 1)[-1]
            expected = manifest.files.get(name)
            if expected is None or digests.get(name):  # not listed, or already have a good copy
                continue
            try:
                data = read()
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, tarfile.TarError):
                digests[name] = None  # a damaged member (CRC, truncated data)
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest.startswith(expected):
                (staging / name).write_bytes(data)
                bar.update(1)
                digests[name] = digest
            else:
                digests[name] = None
    return verify(manifest, digests)


def installed_verdict(directory: Path, manifest: Manifest) -> Verdict | None:
    """The verdict on `directory/images/` as installed (None if there is none or a split CSV
    differs from the manifest's)."""
    images = directory / "images"
    if not images.is_dir():
        return None
    for split in SPLITS:
        csv_path = directory / f"{split}.csv"
        try:
            csv = csv_path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(csv).hexdigest() != manifest.csv_sha256[split]:
            return None
    return verify_folder(images, manifest)


def verify_folder(images: Path, manifest: Manifest) -> Verdict:
    """The verdict on the images in one folder (Ravi's `images/`)."""
    return verify(manifest, _digests(images.iterdir(), manifest))


def _digests(paths: Iterable[Path], manifest: Manifest) -> dict[str, str | None]:
    """name -> sha256 of each file the manifest lists (None if unreadable)."""
    digests: dict[str, str | None] = {}
    for path in paths:
        if path.name in manifest.files:
            try:
                digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digests[path.name] = None
    return digests


def manifest_report(
    layout: str, path: Path, manifest: Manifest | None = None
) -> dict[str, object] | None:
    """For `reptorch data check`: how many of a set's files are the manifest's (csv and folders
    layouts; None for zip and pickle). A copy made otherwise (other JPEG encoding, other names)
    can be complete and sound and still match none: this says which copy it is, not whether
    it loads."""
    manifest = manifest or load_manifest()
    if layout == "csv":
        files: Iterable[Path] = (path / "images").iterdir()
    elif layout == "folders":
        files = (f for s in SPLITS if (path / s).is_dir() for f in (path / s).glob("*/*"))
    else:
        return None
    verdict = verify(manifest, _digests(files, manifest))
    return {
        "matched": verdict.matched,
        "total": verdict.total,
        "ok": verdict.ok,
        "summary": verdict.describe(),
    }


def _other_layout(directory: Path) -> str | None:
    """A Mini-ImageNet layout already in `directory` that the loader would prefer to Ravi's."""
    for split in SPLITS:
        if (directory / split).is_dir():
            return f"{directory / split}/ (class folders)"
        if (directory / PICKLE_NAME.format(split=split)).is_file():
            return str(directory / PICKLE_NAME.format(split=split))
    return None


def _prepare(directory: Path) -> None:
    writable_target(directory)
    other = _other_layout(directory)
    if other:
        raise DataError(
            f"{directory} already holds Mini-ImageNet in another layout ({other}), which the "
            "loader would read instead: check it with `reptorch data check miniimagenet`, or "
            "move it away (or choose another --data-dir) to install the verified copy"
        )
    for pattern in (
        f"{_PREFIX}*{_STAGING}",
        f"{_PREFIX}*{_OLD}",
        f".*.csv.*{_TMP}",
        f".{_ARCHIVE}.*.part",
    ):
        for stale in directory.glob(pattern):  # left by a killed earlier run
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _work_folder(directory: Path, suffix: str) -> Path:
    """A new hidden folder in `directory`, with the umask's permissions (a shared data root
    stays readable by others, which `mkdtemp`'s 0700 would not)."""
    for attempt in range(100):
        path = directory / f"{_PREFIX}{os.getpid()}-{attempt}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise DataError(f"cannot create a work folder in {directory}: remove its {_PREFIX}* folders")


def _install(directory: Path, staging: Path, manifest: Manifest) -> None:
    """Put the verified images in place: the old `images/` aside, the CSVs, then one rename;
    at no point does `images/` hold a partial set beside the split files."""
    images = directory / "images"
    old = None
    if images.exists():
        old = _work_folder(directory, _OLD)
        os.replace(images, old / "images")
    try:
        for split in SPLITS:
            tmp = directory / f".{split}.csv.{os.getpid()}{_TMP}"
            tmp.write_bytes(split_csv(manifest, split))  # the umask's permissions, as for images
            os.replace(tmp, directory / f"{split}.csv")
        os.replace(staging, images)
    except BaseException:
        if old is not None and not images.exists():  # put the previous copy back
            os.replace(old / "images", images)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def download_miniimagenet(
    directory: Path,
    url: str | None = None,
    archive: Path | None = None,
    manifest: Manifest | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Install the verified Mini-ImageNet in `directory` (`<root>/miniimagenet`): `images/` and
    `train.csv`, `val.csv`, `test.csv`. A copy already there is kept if it verifies (unless
    `force`). `archive` is a local zip/tar to use instead of downloading `url`."""
    if archive is not None and not Path(archive).expanduser().is_file():
        raise DataError(f"--archive {archive}: no such file (give the path of a zip or tar)")
    manifest = manifest or load_manifest()
    _prepare(directory)
    if not force:
        present = installed_verdict(directory, manifest)
        if present is not None and present.ok:
            log(f"{directory}: {present.total} images already present and verified")
            return directory
        if present is not None:
            log(f"{directory} does not match the manifest ({present.describe()}); installing again")
    tmp = None
    if archive is not None:
        source, origin = Path(archive).expanduser(), str(archive)
    else:
        origin = miniimagenet_url(url)
        hint = "download the archive by hand and pass it with --archive PATH"
        tmp = source = fetch(origin, directory / _ARCHIVE, progress, hint=hint)
    staging = _work_folder(directory, _STAGING)
    try:
        verdict = extract_verified(source, origin, manifest, staging, progress)
        if not verdict.ok:
            raise DataError(
                f"{origin} is not the complete Mini-ImageNet: {verdict.describe()}; nothing was "
                "installed (download again, or pass --url/--archive of a complete copy)"
            )
        _install(directory, staging, manifest)
    except OSError as err:  # writing the staging folder or installing: disk full, permissions
        raise DataError(
            f"cannot write Mini-ImageNet into {directory} ({err.strerror or err}): it needs about "
            "250 MB free beside the download; free space or choose another --data-dir (the "
            "previous copy, if any, is unchanged)"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    splits = " / ".join(str(len(manifest.splits[s])) for s in SPLITS)
    log(
        f"{directory}: {verdict.total} images verified against the manifest ({splits} classes), "
        "installed as images/ with train.csv val.csv test.csv"
    )
    return directory
