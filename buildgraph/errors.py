"""The errors buildgraph reports to users, and the exit code each maps to.

Exit codes are stable: 0 success, 1 a build (or check) failed, 2 a usage or
configuration error, 130 interrupted. A failed *action* is a value (see
scheduler.NodeOutcome), not an exception; these exceptions are for the cases
where buildgraph cannot go on.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BuildgraphError(Exception):
    """Base class: carries the exit code the CLI returns for it."""

    exit_code = EXIT_FAILED


class ConfigError(BuildgraphError):
    """Invalid workspace input: names the file, line and field, with a hint."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        text = f"{where}{field}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class UsageError(BuildgraphError):
    """Bad command-line use (unknown node, bad option value)."""

    exit_code = EXIT_USAGE


class StoreError(BuildgraphError):
    """The cache cannot be used (unwritable directory, locked by gc)."""

    exit_code = EXIT_FAILED


def closest(name: str, choices) -> str | None:
    """The closest valid name to a typo, or None when nothing is close."""
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, choices) -> str | None:
    match = closest(name, choices)
    return f"did you mean '{match}'?" if match else None
