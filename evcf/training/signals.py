"""SIGINT and SIGTERM during a run: stop at the next safe point, checkpoint, raise :class:`Interrupted`."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import EvcfError

__all__ = ["Interrupted", "SAME_REQUEST_S"]


class Interrupted(EvcfError):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) and checkpointed."""

    def __init__(self, problem: str, *, path: Path, signum: int) -> None:
        super().__init__(problem, path=path, fix="run the same command again: it resumes from the checkpoint")
        self.signum = signum


# a repeat of the same signal within this many seconds is the same request to stop, not a second one
SAME_REQUEST_S = 2.0


class _Signals:
    """While active: the first SIGINT or SIGTERM asks the loop to stop at its next safe point (the end
    of the epoch, or of the setting for a self-fitting model), where it checkpoints and raises
    :class:`Interrupted`; a second one stops at once (the last checkpoint is kept).  Installed only in
    the main thread (signal handlers cannot be set elsewhere), otherwise a no-op."""

    def __init__(self, say: Callable[[str], None], where: str) -> None:
        self.received: int | None = None
        self._received_at = 0.0
        self._say, self._where = say, where
        self._saved: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signum and time.monotonic() - self._received_at < SAME_REQUEST_S:
            return  # one Ctrl-C delivered twice: to the process group, and forwarded by Snakemake
        if self.received is not None:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        self.received, self._received_at = signum, time.monotonic()
        self._say(f"{signal.Signals(signum).name} received: {self._where} stops at the end of the current "
                  f"{'epoch' if 'epoch' in self._where else 'setting'} and writes a checkpoint "
                  f"(send it again to stop now, losing the work since the last checkpoint)")

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved = {}
