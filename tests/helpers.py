"""Small models and task batches shared by the core tests; a loopback server for downloads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from reptorch.models import OmniglotNet


def tiny_convnet(ways: int = 3, filters: int = 4, seed: int = 0) -> nn.Module:
    """The paper's Omniglot network with few filters: BatchNorm, TF padding, everything."""
    torch.manual_seed(seed)
    return OmniglotNet(ways, filters=filters)


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def image_tasks(tasks: int, steps: int, batch: int, ways: int = 3, seed: int = 0):
    """Random 28x28 images and labels shaped (T, k, B, 1, 28, 28), (T, k, B)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(tasks, steps, batch, 1, 28, 28, generator=g)
    ys = torch.randint(0, ways, (tasks, steps, batch), generator=g)
    return xs, ys


def vector_tasks(tasks: int, steps: int, batch: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, steps, batch, 3, generator=g, dtype=dtype)
    ys = torch.randint(0, 2, (tasks, steps, batch), generator=g)
    return xs, ys


# A 3-way Omniglot run in seconds: the reference's flags, scaled down.
TINY = ["--classes", "3", "--shots", "1", "--train-shots", "3", "--inner-batch", "3"]
TINY += ["--inner-iters", "2", "--meta-batch", "2", "--eval-iters", "3", "--device", "cpu"]


def tiny_run(directory, data_dir, *flags: str):
    """`reptorch train` of the TINY settings for 2 iterations into `directory` (and `flags`)."""
    from reptorch.cli import main

    argv = ["train", *TINY, "--meta-iters", "2", "--eval-samples", "0", "--no-progress", *flags]
    assert main([*argv, "--data-dir", str(data_dir), "--checkpoint", str(directory)]) == 0
    return directory


def untrained_omniglot_run(directory, eval_iters: int = 10, ways: int = 5):
    """A run directory (config.json + checkpoint) of the paper's Omniglot net, untrained: phi from
    the seed, a fresh inner Adam state. What `reptorch demo --checkpoint` reads, in a second."""
    import json
    from pathlib import Path

    from reptorch.config import resolve
    from reptorch.functional import FunctionalModel
    from reptorch.inner_optim import Adam
    from reptorch.run.checkpoint import Checkpoint, save_checkpoint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = resolve("omniglot-5w1s", classes=ways, eval_iters=eval_iters)
    torch.manual_seed(0)
    phi = FunctionalModel(OmniglotNet(ways)).init_params()
    save_checkpoint(directory, Checkpoint(0, phi, Adam(config.learning_rate).init(phi)))
    (directory / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    return directory


# (mode, name) of a request GET /MODE/NAME -> None (404), or (the bytes to send, the
# Content-Length to announce or None for none, the Content-Type or None): a server can cut a
# transfer short or lie.
Respond = Callable[[str, str], "tuple[bytes, int | None, str | None] | None"]


class LoopbackServer:
    """An HTTP server on 127.0.0.1 in a daemon thread, for download tests; `requests` lists the
    paths asked for."""

    def __init__(self, respond: Respond) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests.append(self.path)
                mode, _, name = self.path.strip("/").partition("/")
                answer = respond(mode, name)
                if answer is None:
                    self.send_error(404)
                    return
                body, length, kind = answer
                self.send_response(200)
                if kind is not None:
                    self.send_header("Content-Type", kind)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def assert_shipped_model_is_whole(model, max_bytes: int) -> None:
    """A shipped model's invariants: the carried inner Adam state of its whole training
    (step = iterations x meta-batch x inner steps), finite weights, the card's iteration, size."""
    from reptorch.inner_optim import AdamState

    c = model.config
    assert isinstance(model.inner_state, AdamState)
    assert model.inner_state.step == model.iteration * c.meta_batch * c.inner_iters > 0
    assert model.card["iterations"] == model.iteration
    assert all(torch.isfinite(v).all() for v in model.phi.values())
    assert sum(p.stat().st_size for p in model.directory.iterdir()) < max_bytes


def assert_both_modes_reproduce_the_card(model, trainer, shots: int) -> None:
    """`evaluate_modes` on the card's check tasks gives its per-task scores, task for task."""
    rows = {r["transductive"]: r["check"] for r in model.card["results"] if r["shots"] == shots}
    tasks, seed = rows[False]["tasks"], rows[False]["seed"]
    both = trainer.evaluate_modes(
        (False, True), num_tasks=tasks, seed=seed, shots=shots, keep_scores=True, progress=False
    )
    for mode in (False, True):
        assert both[mode]["task_scores"] == rows[mode]["task_scores"]
        assert both[mode]["accuracy"] == pytest.approx(rows[mode]["accuracy"], abs=1e-12)
