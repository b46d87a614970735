"""Shared fixtures: data tests read ../shared/data; with CI=true missing data fails, not skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("REPTORCH_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"test data not found at {path} (set REPTORCH_TEST_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The root holding omniglot/ and miniimagenet/ (../shared/data)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def omniglot_dir(shared_data: Path) -> Path:
    return _require(shared_data / "omniglot")


@pytest.fixture(scope="session")
def miniimagenet_dir(shared_data: Path) -> Path:
    return _require(shared_data / "miniimagenet")
