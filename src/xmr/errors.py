"""Errors that carry where bad input came from, so the CLI can print one clear line."""

from __future__ import annotations


class XmrError(Exception):
    """Base class for errors xmr reports to users without a traceback."""


class DataError(XmrError):
    """Bad user data: names the file, the line (1-based) and the field that is wrong."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ModelMismatchError(XmrError):
    """An index or embedding shard is used with a different model than the one that built it."""
