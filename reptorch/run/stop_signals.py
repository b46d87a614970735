"""A graceful stop for long runs: SIGINT (Ctrl-C) or SIGTERM ends the current meta-iteration,
writes a checkpoint and exits, so an interrupted run loses nothing and resumes exactly.

While `StopSignals` is active (in the main thread of a single-process run), the first SIGINT or
SIGTERM is only recorded; the training loop checks `received` between meta-iterations. A second
signal acts as it did before (Ctrl-C twice: stop now). Under torchrun the processes could see a
signal at different iterations and then wait for each other forever, so there the signals keep
their usual meaning (resume from the last periodic checkpoint).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager recording the first SIGINT/SIGTERM in `received` (its number)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._restore()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._restore()  # a second signal: the usual behaviour

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return "" if self.received is None else signal.Signals(self.received).name
