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


@pytest.fixture(scope="session")
def omniglot_strokes(shared_data: Path) -> Path:
    """The Omniglot pen-stroke subset (3,120 drawings of 156 background characters)."""
    return _require(shared_data / "omniglot-strokes" / "strokes_background_small2.zip")


@pytest.fixture(scope="session")
def trained_demo_model():
    """The shipped default Omniglot model (`reptorch.pretrained`); before one ships, a run
    directory named by $REPTORCH_DEMO_CHECKPOINT. Missing: fails in CI, skips elsewhere."""
    from reptorch.cli.demo import DEFAULT_MODEL
    from reptorch.demo.model import from_checkpoint, from_pretrained
    from reptorch.errors import ReptorchError

    if os.environ.get("REPTORCH_DEMO_CHECKPOINT"):
        return from_checkpoint(Path(os.environ["REPTORCH_DEMO_CHECKPOINT"]))
    try:
        return from_pretrained(DEFAULT_MODEL)
    except (ImportError, ReptorchError) as error:
        message = f"no trained model for the demo tests ({error})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
