"""Reading text files line by line with errors that name the file, the line and the column.

A leading UTF-8 byte-order mark is dropped (spreadsheet exports write one); a byte that is not
UTF-8 is a :class:`~xmr.errors.DataError` naming where it is. :class:`BadRecords` carries the
``skip_bad`` choice: let each bad record's error through, or count it and go on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from xmr.errors import DataError

UTF8_BOM = b"\xef\xbb\xbf"
MAX_SKIP_EXAMPLES = 10


class BadRecords:
    """``skip_bad`` bookkeeping. Use as ``with bad:`` around the handling of one record: a
    DataError inside either propagates, or (with ``skip_bad``) is counted and swallowed, which
    skips the rest of that record. Check a record fully before changing any state."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.count = 0
        self.examples: list[str] = []

    def report(self, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        self.count += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(str(error))

    def __enter__(self) -> BadRecords:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, DataError) and self.skip_bad:
            self.report(exc)
            return True
        return False

    def attach(self, dataset: Any) -> Any:
        """Add the count and examples to a data set's ``skipped`` / ``skipped_examples``."""
        dataset.skipped += self.count
        room = MAX_SKIP_EXAMPLES - len(dataset.skipped_examples)
        dataset.skipped_examples.extend(self.examples[: max(room, 0)])
        return dataset


def open_binary(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise DataError(f"cannot open: {exc.strerror or exc}", file=str(path)) from None


def strip_bom(raw: bytes) -> bytes:
    """``raw`` without a leading UTF-8 byte order mark (Windows editors write one; it would
    otherwise become part of the first id or text)."""
    return raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw


def bom_length(raw: bytes) -> int:
    """3 when ``raw`` starts with a UTF-8 byte order mark, else 0."""
    return len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0


def _utf8_error(byte: int, column: int) -> str:
    return f"not valid UTF-8 (byte 0x{byte:02x} at column {column})"


def iter_lines(path: Path, bad: BadRecords) -> Iterator[tuple[int, str]]:
    """``(line number, text without the newline)`` for every line; a line that is not UTF-8 is a
    DataError naming the line and column of the first bad byte."""
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1:
                raw = strip_bom(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                message = _utf8_error(raw[exc.start], exc.start + 1)
                bad.report(DataError(message, file=str(path), line=lineno))
                continue
            yield lineno, text.rstrip("\r\n")


def read_text(path: Path) -> str:
    """A whole file as text; a non-UTF-8 byte is a DataError naming its line."""
    with open_binary(path) as fh:
        raw = fh.read()
    raw = strip_bom(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        lineno = raw.count(b"\n", 0, exc.start) + 1
        message = _utf8_error(raw[exc.start], column)
        raise DataError(message, file=str(path), line=lineno) from None


def load_json(path: Path) -> Any:
    """A whole JSON document; bad JSON is a DataError naming the line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"bad JSON ({exc.msg} at column {exc.colno})", file=str(path), line=exc.lineno
        ) from None
