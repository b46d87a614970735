"""The Mini-ImageNet manifest shipped with reptorch: every image's digest, its class and split.

`reptorch/data/miniimagenet_manifest.json.gz` (built once by `build_manifest` from the sha256 of
the 60,000 files) holds, per class of Ravi & Larochelle's split, each file's sha256 cut to its
first 8 hex digits (32 bits) and the full sha256 of the class's `sha256sum` listing
(`"<sha256>  <name>\\n"` per file, sorted by name). The short digest names the file that differs;
the class digest gives SHA-256's full strength: a damaged file whose short digest still matches
(a 2^-32 chance each) changes its class's digest, so a set that passes `verify` is the manifest's
set unless SHA-256 itself has a second preimage. That keeps the shipped file at ~300 KB instead
of ~2 MB for 60,000 full digests.

Ravi's split files are not shipped: `split_csv` writes them from the manifest (the class of a file
is the wnid its name starts with, the rows sorted by file name) and the manifest holds the sha256
of Ravi's originals, so a generated file is checked byte for byte.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reptorch.errors import DataError

MANIFEST_PATH = Path(__file__).resolve().with_name("miniimagenet_manifest.json.gz")
FORMAT = 1
SHORT_HEX = 8  # hex digits of each file's sha256 kept in the manifest (32 bits)
SPLITS = ("train", "val", "test")

# The public copy the shipped manifest describes (its train/ and val/ re-split all 100 classes).
REPOSITORY = "https://github.com/Deo0330/split_minidataset"
COMMIT = "557ebcae0db23651f9370f54a5f31b1f0fd4064d"  # 2022-04-25, "miniimagenet"
ARCHIVE_URL = f"{REPOSITORY}/archive/{COMMIT}.zip"
CSV_HEADER = "filename,label\n"
_NAME = re.compile(r"n\d{8}\d{8}\.jpg")  # Ravi's file names: <wnid><8-digit number>.jpg


@dataclass(frozen=True)
class Manifest:
    """What a complete, verified Mini-ImageNet holds."""

    splits: dict[str, tuple[str, ...]]  # split -> wnids, sorted
    files: dict[str, str]  # file name -> short sha256 (SHORT_HEX hex digits)
    class_sha256: dict[str, str]  # wnid -> sha256 of the class's sha256sum listing
    csv_sha256: dict[str, str]  # split -> sha256 of its split CSV
    source: dict[str, str] = field(default_factory=dict)  # where the shipped copy comes from

    def class_of(self, name: str) -> str:
        """The wnid of an image file (`n0153282900000005.jpg` -> `n01532829`)."""
        return name[:9]

    def class_files(self) -> dict[str, list[str]]:
        """wnid -> its file names, sorted."""
        by_class: dict[str, list[str]] = {w: [] for s in self.splits.values() for w in s}
        for name in sorted(self.files):
            by_class[self.class_of(name)].append(name)
        return by_class


def _class_listing(digests: Mapping[str, str], names: Iterable[str]) -> bytes:
    return "".join(f"{digests[n]}  {n}\n" for n in sorted(names)).encode()


def class_digest(digests: Mapping[str, str], names: Iterable[str]) -> str:
    """sha256 of a class's `sha256sum` listing, from each file's full sha256."""
    return hashlib.sha256(_class_listing(digests, names)).hexdigest()


def split_csv(manifest: Manifest, split: str) -> bytes:
    """Ravi's `<split>.csv` as written from the manifest: `filename,label`, rows sorted by name."""
    wnids = set(manifest.splits[split])
    names = sorted(n for n in manifest.files if manifest.class_of(n) in wnids)
    return (CSV_HEADER + "".join(f"{n},{manifest.class_of(n)}\n" for n in names)).encode()


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


@dataclass(frozen=True)
class Verdict:
    """Files compared with a manifest: what is missing, what differs."""

    total: int  # files the manifest lists
    matched: int  # files whose digest matches
    missing: dict[str, list[str]]  # wnid -> its absent files (classes with none absent left out)
    corrupt: list[str]  # files whose short digest differs, or unreadable
    classes_differ: list[str]  # complete classes whose listing sha256 differs all the same
    class_sizes: dict[str, int]  # wnid -> files the manifest lists for it

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.classes_differ)

    def describe(self) -> str:
        """One line: the corrupt files by name, the missing ones by class, the differing classes."""
        parts = []
        if self.corrupt:
            parts.append(
                f"{len(self.corrupt)} of {self.total} images corrupt or different "
                f"({_some(self.corrupt)})"
            )
        if self.missing:
            lost = sum(len(v) for v in self.missing.values())
            whole = [w for w, v in self.missing.items() if len(v) == self.class_sizes[w]]
            part = [w for w in self.missing if w not in whole]
            detail = []
            if whole:
                detail.append(
                    f"{len(whole)} whole classes ({_some(whole)})"
                    if len(whole) > 1
                    else f"all of class {whole[0]}"
                )
            for wnid in part[:3]:
                files = self.missing[wnid]
                detail.append(
                    f"class {wnid}: {len(files)} of {self.class_sizes[wnid]} ({_some(files, 2)})"
                )
            if len(part) > 3:
                detail.append(f"{len(part) - 3} more classes short")
            parts.append(f"{lost} of {self.total} images missing: {'; '.join(detail)}")
        if self.classes_differ:
            parts.append(
                f"classes {_some(self.classes_differ)} differ from the manifest's sha256 although "
                "every file's short digest matches"
            )
        return "; ".join(parts) if parts else f"all {self.total} images match the manifest"


def verify(manifest: Manifest, digests: Mapping[str, str | None]) -> Verdict:
    """Compare files' full sha256 (`name -> hex`, None for an unreadable file; absent names are
    missing) with the manifest: each file's short digest, then each complete class's sha256."""
    by_class = manifest.class_files()
    missing: dict[str, list[str]] = {}
    corrupt: list[str] = []
    differ: list[str] = []
    for wnid, names in by_class.items():
        absent = [n for n in names if n not in digests]
        if absent:
            missing[wnid] = absent
        bad = [
            n for n in names if n in digests and (digests[n] or "")[:SHORT_HEX] != manifest.files[n]
        ]
        corrupt.extend(bad)
        if not absent and not bad and class_digest(digests, names) != manifest.class_sha256[wnid]:
            differ.append(wnid)
    return Verdict(
        total=len(manifest.files),
        matched=len(manifest.files) - sum(map(len, missing.values())) - len(corrupt),
        missing=missing,
        corrupt=corrupt,
        classes_differ=differ,
        class_sizes={w: len(v) for w, v in by_class.items()},
    )


def build_manifest(
    digests: Mapping[str, str],
    splits: Mapping[str, Iterable[str]],
    source: Mapping[str, str] | None = None,
) -> Manifest:
    """A manifest from each file's full sha256 (`name -> hex`) and each split's wnids; every
    file's name must start with the wnid of a class of `splits`."""
    split_classes = {s: tuple(sorted(splits[s])) for s in SPLITS}
    wnids = {w for s in split_classes.values() for w in s}
    by_class: dict[str, list[str]] = {w: [] for w in wnids}
    for name in digests:
        if name[:9] not in by_class or not _NAME.fullmatch(name):
            raise DataError(f"{name}: expected <wnid of the split><digits>.jpg as its name")
        by_class[name[:9]].append(name)
    manifest = Manifest(
        splits=split_classes,
        files={n: d[:SHORT_HEX] for n, d in sorted(digests.items())},
        class_sha256={w: class_digest(digests, names) for w, names in sorted(by_class.items())},
        csv_sha256={},
        source=dict(source or {}),
    )
    for split in SPLITS:
        manifest.csv_sha256[split] = hashlib.sha256(split_csv(manifest, split)).hexdigest()
    return manifest


def read_sha256sum(path: Path) -> dict[str, str]:
    """name -> sha256 from a `sha256sum` listing (`digest  name` lines), gzip'd or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:  # type: ignore[operator]
        pairs = (line.rstrip("\n").split(None, 1) for line in handle if line.strip())
        return {name.lstrip("*"): digest for digest, name in pairs}


def _pack_class(manifest: Manifest, wnid: str, names: list[str]) -> dict[str, str]:
    """One class as stored: its image numbers as gaps from the previous one, its short digests
    as base64 of the raw bytes (random bytes: hex would double them), its listing's sha256."""
    numbers = [int(n[9:17]) for n in names]
    gaps = [b - a for a, b in zip([0, *numbers], numbers)]
    short = bytes.fromhex("".join(manifest.files[n] for n in names))
    return {
        "numbers": " ".join(map(str, gaps)),
        "short_sha256": base64.b64encode(short).decode(),
        "sha256": manifest.class_sha256[wnid],
    }


def _unpack_class(wnid: str, entry: Mapping[str, str]) -> dict[str, str]:
    numbers = list(itertools.accumulate(int(g) for g in entry["numbers"].split()))
    short = base64.b64decode(entry["short_sha256"], validate=True).hex()
    if len(short) != SHORT_HEX * len(numbers):
        raise ValueError(f"class {wnid}: {len(numbers)} files but {len(short)} digest digits")
    return {
        f"{wnid}{number:08d}.jpg": short[i * SHORT_HEX : (i + 1) * SHORT_HEX]
        for i, number in enumerate(numbers)
    }


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as gzip'd JSON (mtime 0, so the same manifest gives the same bytes)."""
    classes = {w: _pack_class(manifest, w, names) for w, names in manifest.class_files().items()}
    document = {
        "format": FORMAT,
        "dataset": "miniimagenet",
        "files": f"<wnid><8-digit number>.jpg; short_sha256: first {SHORT_HEX} hex digits each",
        "source": manifest.source,
        "splits": {s: list(manifest.splits[s]) for s in SPLITS},
        "csv_sha256": manifest.csv_sha256,
        "classes": dict(sorted(classes.items())),
    }
    text = json.dumps(document, separators=(",", ":")).encode()
    return gzip.compress(text, compresslevel=9, mtime=0)


def parse_manifest(data: bytes, origin: str) -> Manifest:
    """A manifest from `manifest_bytes`' output; `DataError` naming `origin` if it is not one."""
    try:
        document = json.loads(gzip.decompress(data))
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
        files: dict[str, str] = {}
        for wnid, entry in document["classes"].items():
            files.update(_unpack_class(wnid, entry))
        return Manifest(
            splits={s: tuple(document["splits"][s]) for s in SPLITS},
            files=dict(sorted(files.items())),
            class_sha256={w: e["sha256"] for w, e in document["classes"].items()},
            csv_sha256=dict(document["csv_sha256"]),
            source=dict(document.get("source", {})),
        )
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{origin} is not a Mini-ImageNet manifest ({err})") from None


def load_manifest(path: Path | None = None) -> Manifest:
    """The shipped manifest (or the one at `path`)."""
    path = path or MANIFEST_PATH
    try:
        data = path.read_bytes()
    except OSError as err:
        message = f"cannot read the manifest {path} ({err.strerror}): reinstall reptorch"
        raise DataError(message) from None
    return parse_manifest(data, str(path))


def main(argv: list[str] | None = None) -> int:
    """`python -m reptorch.data.miniimagenet_manifest SHA256SUM [OUT]`: (re)build the shipped
    manifest from the `sha256sum` listing of the 60,000 images (the shared `images.sha256.gz`)."""
    import sys

    from reptorch.data.miniimagenet import SPLIT_CLASSES

    args = sys.argv[1:] if argv is None else argv
    listing = Path(args[0])
    out = Path(args[1]) if len(args) > 1 else MANIFEST_PATH
    source = {"repository": REPOSITORY, "commit": COMMIT, "archive_url": ARCHIVE_URL}
    manifest = build_manifest(read_sha256sum(listing), SPLIT_CLASSES, source)
    out.write_bytes(manifest_bytes(manifest))
    print(f"{out}: {len(manifest.files)} files, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
