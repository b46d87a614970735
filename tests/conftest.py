"""Shared fixtures: data tests read ../shared/data; with CI=true missing data fails, not skips.

Two tiers. `pytest -q` runs the quick one (under 3 minutes on an idle 2-core machine); the long
one, `pytest -q -m slow`, holds the end-to-end runs listed in `LONG_TIER` (torchrun jobs, whole
commands in subprocesses, a browser, thousands of drawings or tasks), marked `slow` here at
collection; `.ci/run` runs both. `tests/test_tiers.py` checks that every name listed exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# file -> the tests of the long tier in it (None: all of them); each took 10 s or more here
LONG_TIER: dict[str, tuple[str, ...] | None] = {
    "test_distributed.py": None,  # torchrun jobs of 2-5 processes
    "test_tabular_cli.py": None,  # the tabular study's quick run
    "test_demo_fidelity.py": None,  # 1,000 tasks of rendered strokes
    "test_demo_browser.py": None,  # Chromium
    "test_demo_static.py": None,  # the static export in Chromium
    "test_pretrained.py": (  # the card's per-task scores, 100 tasks per cell
        "test_evaluation_reproduces_the_cards_per_task_scores",
        "test_both_modes_at_once_reproduce_the_cards_per_task_scores",
        "test_eval_cli_with_model_prints_the_cards_figure",
    ),
    "test_pretrained_miniimagenet.py": (  # the full set's 100 tasks per cell
        "test_evaluation_reproduces_the_cards_per_task_scores",
        "test_eval_cli_with_model_prints_the_cards_figure",
    ),
    "test_resume.py": ("test_sigkill_and_resume_is_bit_identical",),
    "test_demo_render.py": ("test_rendered_strokes_look_like_the_official_images",),
    "test_demo_server.py": (
        "test_cli_mistakes_are_one_line",
        "test_fifty_concurrent_clients_get_their_own_answers",
        "test_package_data_ships_the_page_and_examples",
    ),
    "test_download.py": ("test_download_extract",),
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = LONG_TIER.get(item.path.name, ())
        if names is None or getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(autouse=True)
def _aten_kernels_after_each_test():
    """A `Trainer` selects its run's block passes for the process
    (`reptorch.fast.fused.select`): put back the library default after every test, so no test
    depends on which ran before it."""
    yield
    from reptorch.fast import fused

    fused.select("aten")
