"""Ctrl-C between steps: a step cut short cannot be saved, so the interrupt waits for it."""

from __future__ import annotations

import signal
import threading
from typing import Any


class InterruptAtStepEnd:
    """Holds a Ctrl-C (SIGINT) until the step in progress is complete: a step cut short leaves
    weights and optimiser state half updated, which cannot be saved, so an interrupt that lands
    in a step (where a training run spends its time) used to lose everything since the last
    periodic checkpoint. ``check()`` raises the held KeyboardInterrupt between steps, where the
    loop saves a checkpoint. A second Ctrl-C stops at once. Only in the main thread, and only
    where SIGINT has Python's default handler (not when ignored or handled by the caller)."""

    def __init__(self, *, enabled: bool) -> None:
        self.requested = False
        self._previous: Any = None
        if (
            enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            self.release()
            raise KeyboardInterrupt

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
