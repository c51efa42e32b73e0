"""The one exception type that evcf raises for problems a user can fix."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EvcfError"]


class EvcfError(Exception):
    """A problem with the user's input: the message names the file, the problem and the fix.

    The CLI prints ``error: <message>`` on one line and exits with status 2, without a traceback.
    """

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.fix = fix
        parts = [f"{self.path}: {problem}" if self.path else problem]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" -- ".join(parts))
