"""Stopping a pipeline run is not crashing (installed by workflow/rules/common.smk once jobs start).

Snakemake's local executor waits for its running jobs when it is stopped (SIGINT or SIGTERM), and
on SIGTERM it exits while they train on.  :func:`install` puts a handler in front of Snakemake's
own: it forwards the signal to every process this Snakemake started (an ``evcf train`` finishes
its epoch or setting, writes its checkpoint and exits; a Ctrl-C that reached the whole process
group arrives twice, which evcf.training takes as one request), waits for them, and then lets
Snakemake stop as it does; a repeated signal only forwards again (no second traceback).  At exit,
one line says which runs were stopped and how to resume: the last line on the terminal.
"""

from __future__ import annotations

import atexit
import signal
import sys
import time
from typing import Any, Callable

import psutil

from .status import interrupted_since

__all__ = ["install"]


class _Stop:
    def __init__(self, results: str) -> None:
        self.results, self.started, self.signum = results, time.time(), None

    def handler(self, previous: Any) -> Callable[[int, Any], None]:
        def forward(signum: int, frame: Any) -> None:
            children = psutil.Process().children(recursive=True)
            for child in children:
                try:
                    child.send_signal(signum)
                except psutil.Error:
                    pass  # already gone
            first, self.signum = self.signum is None, self.signum or signum
            if not first:
                return
            psutil.wait_procs(children)  # until they have checkpointed (a second signal stops them at once)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
        return forward

    def say_how_to_resume(self) -> None:
        if self.signum is None:
            return
        runs = interrupted_since(self.results, self.started)
        where = (f"{len(runs)} run(s) checkpointed ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''})"
                 if runs else "no run was in training")
        sys.stderr.write(f"evcf: stopped by {signal.Signals(self.signum).name}: {where}; "
                         "run the same command again to resume\n")


def install(results: str = "results") -> None:
    """Forward SIGINT and SIGTERM to this process's children before the handlers in place now, and
    say at exit which runs under ``results`` were stopped.  Call it in the main thread."""
    stop = _Stop(results)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.handler(signal.getsignal(signum)))
    atexit.register(stop.say_how_to_resume)
