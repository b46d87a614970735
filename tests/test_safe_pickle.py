"""The restricted unpickler: plain numpy data loads, anything that could run code is refused."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reptorch.data.safe_pickle import safe_load
from reptorch.errors import DataError


def _plain() -> dict[str, object]:
    return {
        "image_data": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
        "class_dict": collections.OrderedDict(n01=[0], n02=[1]),
        "names": ["a", "b"],
        "scalar": np.float32(0.5),
        "raw": b"\x00\xff",
    }


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_numpy_data_loads_with_every_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_plain(), protocol=protocol))
    loaded = safe_load(path)
    np.testing.assert_array_equal(loaded["image_data"], _plain()["image_data"])
    assert loaded["class_dict"] == {"n01": [0], "n02": [1]}
    assert loaded["names"] == ["a", "b"] and loaded["raw"] == b"\x00\xff"
    assert loaded["scalar"] == np.float32(0.5)


def test_numpy1_module_names_load(tmp_path: Path) -> None:
    """Files written by numpy 1 name `numpy.core.multiarray`; they load without numpy.core."""
    blob = pickle.dumps(_plain()["image_data"], protocol=2)
    blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in blob
    path = tmp_path / "old.pkl"
    path.write_bytes(blob)
    np.testing.assert_array_equal(safe_load(path), _plain()["image_data"])


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.eval, (f"open({str(self.marker)!r}, 'w')",)


class _RunsPopen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[list[str]]]:
        return subprocess.Popen, (["touch", str(self.marker)],)


@pytest.mark.parametrize(
    ("payload", "refused"),
    [(_RunsShell, "system"), (_RunsEval, "builtins.eval"), (_RunsPopen, "subprocess.Popen")],
)
def test_code_running_pickle_is_refused_and_never_runs(
    tmp_path: Path, payload: type, refused: str
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    # Hidden inside otherwise plain data, as a malicious cache would be.
    path.write_bytes(pickle.dumps({"image_data": np.zeros(3), "class_dict": payload(marker)}))
    with pytest.raises(DataError) as info:
        safe_load(path)
    message = str(info.value)
    assert str(path) in message and refused in message and "\n" not in message
    assert not marker.exists()


def test_other_numpy_callables_are_refused(tmp_path: Path) -> None:
    """Allowing numpy is not enough: only the array-building globals are resolved."""
    path = tmp_path / "x.pkl"
    path.write_bytes(b"cnumpy\nload\n(S'/etc/passwd'\ntR.")
    with pytest.raises(DataError, match=r"numpy\.load"):
        safe_load(path)


def test_protocol2_bytes_codec_is_latin1_only(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_load(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<!DOCTYPE html><html><body>Quota exceeded</body></html>", "not a readable pickle"),
        (pickle.dumps(_plain())[:200], "truncated"),
    ],
)
def test_damaged_pickles_name_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as info:
        safe_load(path)
    assert str(path) in str(info.value)


def test_missing_pickle(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        safe_load(tmp_path / "nope.pkl")
