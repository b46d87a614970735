"""`download_miniimagenet` run for real against a local HTTP server (127.0.0.1) serving archives
built here from the shared sample (15 real images of each of the 100 classes), verified against
a manifest of those images; and the shipped manifest checked against the shared digests and CSVs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import reptorch.data.download_miniimagenet as dl
from reptorch.cli import main
from reptorch.data.download_miniimagenet import MINIIMAGENET_URL_ENV, download_miniimagenet
from reptorch.data.miniimagenet import SPLIT_CLASSES, load_miniimagenet
from reptorch.data.miniimagenet_manifest import (
    ARCHIVE_URL,
    COMMIT,
    MANIFEST_PATH,
    SPLITS,
    Manifest,
    build_manifest,
    load_manifest,
    manifest_bytes,
    parse_manifest,
    read_sha256sum,
    split_csv,
    verify,
)
from reptorch.errors import DataError
from tests.helpers import LoopbackServer

HTML = b"<!DOCTYPE html><html><head><title>Not Found</title></head><body>404</body></html>"
TOP = f"split_minidataset-{COMMIT}"  # GitHub's archives put everything under this folder
BAD_CLASS, SHORT_CLASS = "n01532829", "n02074367"  # train classes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def sample(miniimagenet_dir: Path) -> dict[str, bytes]:
    """file name -> bytes of the shared sample's 1,500 images."""
    with zipfile.ZipFile(miniimagenet_dir / "miniimagenet_sample.zip") as archive:
        return {
            name.rsplit("/", 1)[-1]: archive.read(name)
            for name in archive.namelist()
            if name.endswith(".jpg")
        }


@pytest.fixture(scope="module")
def manifest(sample: dict[str, bytes]) -> Manifest:
    """A manifest of the sample, in the shipped format (round trip through its bytes)."""
    built = build_manifest({n: sha256(d) for n, d in sample.items()}, SPLIT_CLASSES)
    return parse_manifest(manifest_bytes(built), "test manifest")


def github_zip(files: dict[str, bytes], deflate: bool = False) -> bytes:
    """A zip laid out as the default source: `<top>/{train,val}/<wnid>/<name>`, 4 of 5 in train
    (GitHub deflates; stored is quicker to build and reads the same way)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method, compresslevel=1) as archive:
        archive.writestr(f"{TOP}/.gitattributes", "* text=auto\n")
        for i, (name, data) in enumerate(sorted(files.items())):
            part = "val" if i % 5 == 4 else "train"
            archive.writestr(f"{TOP}/{part}/{name[:9]}/{name}", data)
    return buffer.getvalue()


def ravi_tar(files: dict[str, bytes]) -> bytes:
    """A tar.gz of Ravi's `miniimagenet/images/` folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"miniimagenet/images/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def corrupt(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    data = bytearray(files[name])
    data[len(data) // 2] ^= 0xFF  # one byte: the JPEG may still decode, the digest differs
    return {**files, name: bytes(data)}


INSTALLED = ["images", "test.csv", "train.csv", "val.csv"]  # what an install leaves, alone


class Server(LoopbackServer):
    """/ok/NAME the archive; /cut/NAME half of it with the full Content-Length; /cutnolen/NAME
    half of it and no length (a streamed archive dropped); /html/NAME an HTML page; else 404."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        def respond(mode: str, name: str) -> tuple[bytes, int | None, None] | None:
            body = HTML if mode == "html" else bodies.get(name)
            if body is None or mode not in ("ok", "cut", "cutnolen", "html"):
                return None
            sent = body[: len(body) // 2] if mode.startswith("cut") else body
            return sent, None if mode == "cutnolen" else len(body), None

        super().__init__(respond)


@pytest.fixture(scope="module")
def server(sample: dict[str, bytes]) -> Iterator[Server]:
    without_class = {n: d for n, d in sample.items() if not n.startswith(BAD_CLASS)}
    short_name = sorted(n for n in sample if n.startswith(SHORT_CLASS))[3]
    bodies = {
        "full.zip": github_zip(sample, deflate=True),
        "corrupt.zip": github_zip(corrupt(sample, sorted(sample)[7])),
        "gaps.zip": github_zip({n: d for n, d in without_class.items() if n != short_name}),
        "ravi.tar.gz": ravi_tar(sample),
    }
    srv = Server(bodies)
    yield srv
    srv.close()


def download(target: Path, url: str, manifest: Manifest, **kwargs) -> list[str]:
    logs: list[str] = []
    download_miniimagenet(target, url, manifest=manifest, progress=False, log=logs.append, **kwargs)
    return logs


def assert_nothing_installed(target: Path) -> None:
    assert not target.exists() or sorted(p.name for p in target.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The shipped manifest


def test_shipped_manifest_matches_the_shared_digests_and_split_files(
    miniimagenet_dir: Path,
) -> None:
    assert (
        MANIFEST_PATH.stat().st_size < 400_000
    )  # ~283 KB: 32-bit file digests + full class digests
    shipped = load_manifest()
    digests = read_sha256sum(miniimagenet_dir / "images.sha256.gz")
    assert len(shipped.files) == len(digests) == 60_000
    assert verify(shipped, digests).ok  # every short digest and all 100 class sha256
    assert {s: len(shipped.splits[s]) for s in SPLITS} == {"train": 64, "val": 16, "test": 20}
    assert shipped.splits == SPLIT_CLASSES
    for split in SPLITS:  # the generated CSVs are Ravi's, byte for byte
        assert split_csv(shipped, split) == (miniimagenet_dir / f"{split}.csv").read_bytes()
        assert shipped.csv_sha256[split] == sha256(split_csv(shipped, split))
    assert shipped.source["commit"] == COMMIT and COMMIT in ARCHIVE_URL


def test_shipped_manifest_knows_the_sample_and_what_it_lacks(sample: dict[str, bytes]) -> None:
    verdict = verify(load_manifest(), {n: sha256(d) for n, d in sample.items()})
    assert verdict.corrupt == [] and verdict.matched == 1500
    assert sum(map(len, verdict.missing.values())) == 58_500
    assert re.fullmatch(
        r"58500 of 60000 images missing: class n01532829: 585 of 600 \(n01532829\d{8}\.jpg, "
        r"n01532829\d{8}\.jpg, \.\.\. 583 more\); .*; 97 more classes short",
        verdict.describe(),
    )


def test_one_changed_byte_is_caught_by_the_class_digest(sample: dict[str, bytes]) -> None:
    """Even a file whose 32-bit digest prefix matched would fail its class's full sha256."""
    digests = {n: sha256(d) for n, d in sample.items()}
    built = build_manifest(digests, SPLIT_CLASSES)
    name = sorted(digests)[0]
    forged = {**digests, name: digests[name][:8] + "0" * 56}  # same prefix, other content
    verdict = verify(built, forged)
    assert verdict.corrupt == [] and verdict.classes_differ == [name[:9]] and not verdict.ok
    assert f"classes {name[:9]} differ" in verdict.describe()


def test_a_garbled_manifest_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.json.gz"
    bad.write_bytes(gzip.compress(b'{"format": 99}'))
    with pytest.raises(DataError, match="is not a Mini-ImageNet manifest"):
        load_manifest(bad)


# ---------------------------------------------------------------------------------------------
# Downloads


def test_download_installs_ravis_layout(
    server: Server, manifest: Manifest, sample: dict[str, bytes], tmp_path: Path
) -> None:
    target = tmp_path / "miniimagenet"
    logs = download(target, f"{server.url}/ok/full.zip", manifest)
    assert "1500 images verified" in logs[-1]
    assert sorted(p.name for p in target.iterdir()) == INSTALLED
    images = target / "images"
    assert sorted(p.name for p in images.iterdir()) == sorted(sample)
    assert all((images / n).read_bytes() == d for n, d in sample.items())
    for split in SPLITS:
        assert (target / f"{split}.csv").read_bytes() == split_csv(manifest, split)
    splits = load_miniimagenet(tmp_path, allow_partial=True, use_cache=False, workers=1)
    assert {s: (d.num_classes, len(d)) for s, d in splits.items()} == {
        "train": (64, 960),
        "val": (16, 240),
        "test": (20, 300),
    }
    before = len(server.requests)
    logs = download(target, f"{server.url}/ok/full.zip", manifest)
    assert len(server.requests) == before and "already present and verified" in logs[-1]


def test_tar_of_ravis_folder_from_the_env_address(
    server: Server, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MINIIMAGENET_URL_ENV, f"{server.url}/ok/ravi.tar.gz")
    download_miniimagenet(tmp_path, manifest=manifest, progress=False, log=lambda _: None)
    assert len(list((tmp_path / "images").iterdir())) == 1500


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("ok/corrupt.zip", r"1 of 1500 images corrupt or different \(n0153282900000\d+\.jpg\)"),
        (
            "ok/gaps.zip",
            rf"16 of 1500 images missing: all of class {BAD_CLASS}; "
            rf"class {SHORT_CLASS}: 1 of 15 \({SHORT_CLASS}\d{{8}}\.jpg\)",
        ),
        ("html/full.zip", "is an HTML page, not an archive"),
        ("cut/full.zip", r"was cut off: \d+ of \d+ bytes received"),
        ("cutnolen/full.zip", "is a zip cut off before its end"),
        ("missing/full.zip", "answered HTTP 404"),
    ],
)
def test_bad_downloads_say_what_and_install_nothing(
    server: Server, manifest: Manifest, tmp_path: Path, path: str, match: str
) -> None:
    target = tmp_path / "miniimagenet"
    with pytest.raises(DataError, match=match) as info:
        download(target, f"{server.url}/{path}", manifest)
    assert "\n" not in str(info.value)
    assert_nothing_installed(target)  # no images/, no CSV, no temporary file or folder


def test_a_failed_download_keeps_the_installed_copy(
    server: Server, manifest: Manifest, tmp_path: Path
) -> None:
    download(tmp_path, f"{server.url}/ok/full.zip", manifest)
    with pytest.raises(DataError, match="corrupt"):
        download(tmp_path, f"{server.url}/ok/corrupt.zip", manifest, force=True)
    assert verify_installed(tmp_path, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == INSTALLED


def verify_installed(directory: Path, manifest: Manifest) -> bool:
    verdict = dl.installed_verdict(directory, manifest)
    return verdict is not None and verdict.ok


def test_a_damaged_installed_copy_is_replaced(
    server: Server, manifest: Manifest, tmp_path: Path
) -> None:
    download(tmp_path, f"{server.url}/ok/full.zip", manifest)
    victim = sorted((tmp_path / "images").iterdir())[0]
    victim.write_bytes(b"")
    logs = download(tmp_path, f"{server.url}/ok/full.zip", manifest)
    assert f"1 of 1500 images corrupt or different ({victim.name})" in logs[0]
    assert "1500 images verified" in logs[-1]
    assert verify_installed(tmp_path, manifest)


def test_an_interrupted_extraction_leaves_nothing(
    server: Server, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = dl._members

    def interrupted(path: Path, origin: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
        for count, item in enumerate(members(path, origin)):
            if count == 100:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(dl, "_members", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(tmp_path / "miniimagenet", f"{server.url}/ok/full.zip", manifest)
    assert_nothing_installed(tmp_path / "miniimagenet")


def test_leftovers_of_a_killed_run_are_removed_and_another_layout_is_refused(
    server: Server, manifest: Manifest, tmp_path: Path
) -> None:
    stale = tmp_path / ".images.123-0.partial"
    stale.mkdir()
    (stale / "n0153282900000005.jpg").write_bytes(b"half")
    (tmp_path / ".miniimagenet-archive.abc.part").write_bytes(b"PK\x03\x04")
    (tmp_path / ".train.csv.123.tmp").write_bytes(b"filename")
    download(tmp_path, f"{server.url}/ok/full.zip", manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == INSTALLED
    other = tmp_path / "other"
    (other / "train" / BAD_CLASS).mkdir(parents=True)
    with pytest.raises(DataError, match=r"already holds Mini-ImageNet in another layout"):
        download(other, f"{server.url}/ok/full.zip", manifest)


# ---------------------------------------------------------------------------------------------
# Through the command line


def test_cli_archive_on_disk(
    manifest: Manifest,
    sample: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "copy.zip"
    archive.write_bytes(github_zip(sample))
    root = tmp_path / "root"
    args = ["data", "download", "miniimagenet", "--data-dir", str(root), "--quiet"]
    # the shipped manifest: the sample is 1,500 of its 60,000 images
    assert main([*args, "--archive", str(archive)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reptorch: error:") and err.count("\n") == 1
    assert "58500 of 60000 images missing" in err and "nothing was installed" in err
    assert_nothing_installed(root / "miniimagenet")
    monkeypatch.setattr(dl, "load_manifest", lambda: manifest)
    assert main([*args, "--archive", str(archive)]) == 0
    assert "1500 images verified" in capsys.readouterr().out
    assert (root / "miniimagenet" / "images" / sorted(sample)[0]).is_file()
    assert main(["data", "check", "miniimagenet", "--data-dir", str(root)]) == 1  # 15 per class
    out = capsys.readouterr().out
    assert "layout: csv" in out and "train: 64 classes, 960 images" in out
    assert "manifest: 1500 of 1500 images are reptorch's verified copy\n" in out
    assert main([*args, "--archive", str(tmp_path / "absent.zip")]) == 1
    assert "--archive" in capsys.readouterr().err
    assert main([*args, "--archive", str(archive), "--url", "http://127.0.0.1:9/x.zip"]) == 1
    assert "--url and --archive both given" in capsys.readouterr().err
    assert main(["data", "download", "tabular", "--archive", str(archive)]) == 1
    assert "for miniimagenet only" in capsys.readouterr().err


def test_an_install_that_fails_midway_puts_the_previous_copy_back(
    server: Server, manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download(tmp_path, f"{server.url}/ok/full.zip", manifest)

    def disk_full(*args: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dl, "split_csv", disk_full)
    with pytest.raises(DataError, match=r"cannot write Mini-ImageNet into .*No space left"):
        download(tmp_path, f"{server.url}/ok/full.zip", manifest, force=True)
    assert verify_installed(tmp_path, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == INSTALLED
