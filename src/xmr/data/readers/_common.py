"""What every reader needs: line-by-line reading with file:line errors, JSON records with typed
field access, ``skip_bad`` bookkeeping, directory listings for fast image look-up, split names.

Readers raise :class:`~xmr.errors.DataError` for bad records; a :class:`BadRecords` either lets
the error through or, with ``skip_bad``, counts and drops the record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from xmr.data.images import IMAGE_EXTENSIONS
from xmr.errors import DataError, XmrError
from xmr.io.textfiles import (  # noqa: F401 - the readers' toolkit, re-exported
    MAX_SKIP_EXAMPLES,
    UTF8_BOM,
    BadRecords,
    bom_length,
    iter_lines,
    load_json,
    open_binary,
    read_text,
    strip_bom,
)

# Well-known split names first, in this order; others follow alphabetically.
SPLIT_ORDER = ("train", "valid", "val", "dev", "test")
_SPLIT_WORD = re.compile(r"(?:^|[_.\-])(train|valid|val|dev|test)(?=$|[_.\-])", re.IGNORECASE)


def split_sort_key(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def split_from_name(name: str) -> str | None:
    """The split word in a file name (``MR_valid_queries.jsonl`` -> ``valid``), if any."""
    match = _SPLIT_WORD.search(name)
    return match.group(1).lower() if match else None


def require_path(path: Path) -> None:
    if not path.exists():
        raise XmrError(f"{path}: no such file or directory")


def choose_splits(available: Iterable[str], requested: str | None, where: Path) -> list[str]:
    """The splits to read: all of ``available`` (in split order), or the requested one."""
    names = sorted(set(available), key=split_sort_key)
    if not names:
        raise XmrError(f"{where}: no split found in the files there (is the format= right?)")
    if requested is None:
        return names
    if requested not in names:
        raise XmrError(f"{where}: no split '{requested}' (available: {', '.join(names) or 'none'})")
    return [requested]


def require_content(path: Path) -> None:
    """A record file that is present but holds nothing (zero bytes, or only blanks and a byte
    order mark) is an error naming it: that is a truncated download or a wrong file far more
    often than a data set without data, and reading it as empty gives an empty split that fails
    later or, worse, evaluates nothing without a word. Reads only up to the first non-blank byte."""
    with open_binary(path) as fh:
        head = strip_bom(fh.read(len(UTF8_BOM)))
        while True:
            if head.strip():
                return
            head = fh.read(65536)
            if not head:
                break
    raise DataError("empty file: it holds no records", file=str(path))


class Record:
    """One JSON object from a file, with typed field access whose errors name file:line:field.

    Each accessor takes alternative key names (``"query_id", "text_id"``) and uses the first one
    present; ``prefix`` names the record inside a bigger document (``images[3]``)."""

    __slots__ = ("data", "file", "line", "prefix")

    def __init__(self, data: dict, file: Path | str, line: int | None, prefix: str = "") -> None:
        self.data = data
        self.file = str(file)
        self.line = line
        self.prefix = prefix

    def field_name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, message: str, key: str | None = None) -> NoReturn:
        field = self.field_name(key) if key else (self.prefix or None)
        raise DataError(message, file=self.file, line=self.line, field=field)

    def value(self, *keys: str, required: bool = True) -> tuple[str, Any]:
        """``(key, value)`` for the first of ``keys`` present; ``(keys[0], None)`` if absent."""
        for key in keys:
            if key in self.data and self.data[key] is not None:
                return key, self.data[key]
        if required:
            also = f" (or {', '.join(repr(k) for k in keys[1:])})" if len(keys) > 1 else ""
            self.fail(f"missing field{also}", keys[0])
        return keys[0], None

    def text(self, *keys: str, required: bool = True, allow_empty: bool = False) -> str | None:
        """A string field, stripped; empty is an error unless ``allow_empty``."""
        key, value = self.value(*keys, required=required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(f"expected a string, got {type(value).__name__} {value!r:.40}", key)
        value = value.strip()
        if not value and not allow_empty:
            self.fail("empty text", key)
        return value

    def ident(self, *keys: str, required: bool = True) -> str | None:
        """An id field: a non-empty string or an integer, returned as a string."""
        key, value = self.value(*keys, required=required)
        if value is None:
            return None
        return as_ident(value, self, key)

    def text_list(self, *keys: str, required: bool = True) -> list[str] | None:
        """A list of non-empty strings (a single string is accepted as a list of one)."""
        key, value = self.value(*keys, required=required)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail(f"expected a list of strings, got {type(value).__name__}", key)
        out = []
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v.strip():
                self.fail(f"entry {i} is not a non-empty string: {v!r:.40}", key)
            out.append(v.strip())
        return out


def as_ident(value: Any, record: Record, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        record.fail(f"expected an id (string or integer), got {type(value).__name__}", key)
    text = str(value).strip()
    if not text:
        record.fail("empty id", key)
    return text


def _decode_record(text: str, file: Path, lineno: int, bad: BadRecords) -> Record | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        bad.report(
            DataError(f"bad JSON ({exc.msg} at column {exc.colno})", file=str(file), line=lineno)
        )
        return None
    if not isinstance(obj, dict):
        bad.report(
            DataError(
                f"expected a JSON object, got {type(obj).__name__}", file=str(file), line=lineno
            )
        )
        return None
    return Record(obj, file, lineno)


def iter_jsonl(path: Path, bad: BadRecords) -> Iterator[Record]:
    """One Record per non-blank line of a JSON Lines file."""
    for lineno, text in iter_lines(path, bad):
        if text.strip():
            record = _decode_record(text, path, lineno, bad)
            if record is not None:
                yield record


def iter_json_records(path: Path, bad: BadRecords) -> Iterator[Record]:
    """Records of a file that is either a JSON array of objects (each record keeps the line it
    starts on) or JSON Lines, whatever its extension says."""
    if first_char(path) != "[":
        yield from iter_jsonl(path, bad)
        return
    text = read_text(path)
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted_to = 1, 0
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # Past a syntax error the array cannot be re-synchronised: not skippable.
            raise DataError(
                f"bad JSON ({exc.msg} at column {exc.colno})", file=str(path), line=exc.lineno
            ) from None
        if isinstance(obj, dict):
            yield Record(obj, path, line)
        else:
            bad.report(
                DataError(
                    f"expected a JSON object, got {type(obj).__name__}", file=str(path), line=line
                )
            )
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            lineno = text.count("\n", 0, pos) + 1
            raise DataError("bad JSON (expected ',' or ']')", file=str(path), line=lineno)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def peek_text(path: Path, size: int = 65536) -> str:
    """The start of a file for format detection ('' when unreadable)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(size)
    except OSError:
        return ""
    return raw.removeprefix(UTF8_BOM).decode("utf-8", "replace")


def first_char(path: Path) -> str:
    head = peek_text(path, 4096).lstrip()
    return head[:1]


def first_json_record(path: Path) -> dict | None:
    """The first object of a JSON array or JSON Lines file, for detection (None if unsure)."""
    head = peek_text(path).lstrip()
    try:
        if head.startswith("["):
            obj, _ = json.JSONDecoder().raw_decode(head, _skip_ws(head, 1))
        elif head.startswith("{"):
            obj = json.loads(head.split("\n", 1)[0])
        else:
            return None
    except (json.JSONDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class DirectoryIndex:
    """Image look-up by listing each directory once (never a stat per candidate name).

    ``resolve(directory, name)`` finds ``name`` (which may contain sub-directories) and accepts a
    name without its extension (seed 000's ``090000`` -> ``090000.jpg``). Paths are handled as
    strings: pathlib costs more than the look-up itself at 100k images."""

    def __init__(self) -> None:
        self._listings: dict[str, tuple[frozenset[str], dict[str, str]]] = {}

    def listing(self, directory: str) -> tuple[frozenset[str], dict[str, str]]:
        """``(file names, stem -> file name)`` of a directory; the stem map covers image files,
        preferring extensions in ``IMAGE_EXTENSIONS`` order when two files share a stem."""
        cached = self._listings.get(directory)
        if cached is None:
            try:
                with os.scandir(directory or ".") as it:
                    names = [e.name for e in it if e.is_file()]
            except OSError:
                names = []
            rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
            best: dict[str, tuple[int, str]] = {}
            for name in names:
                stem, ext = os.path.splitext(name)
                r = rank.get(ext.lower())
                if r is not None and (stem not in best or r < best[stem][0]):
                    best[stem] = (r, name)
            cached = (frozenset(names), {stem: name for stem, (_, name) in best.items()})
            self._listings[directory] = cached
        return cached

    def resolve(self, directory: str | Path, name: str) -> str | None:
        """The path of ``name`` under ``directory`` (absolute ``name``: itself), or None."""
        directory = os.fspath(directory)
        if "/" in name or os.sep in name or not directory:
            parent, leaf = os.path.split(os.path.join(directory, name))
        else:  # the common case, kept cheap
            parent, leaf = directory, name
        names, stems = self.listing(parent)
        if leaf in names:
            return f"{parent}{os.sep}{leaf}" if parent else leaf
        if leaf in stems and not is_image_name(leaf):
            return f"{parent}{os.sep}{stems[leaf]}" if parent else stems[leaf]
        return None

    def resolve_among(self, bases: Iterable[str | Path], name: str) -> str | None:
        """``name`` as an absolute path, or relative to the first base where it exists."""
        if os.path.isabs(name):
            return self.resolve("", name)
        for base in bases:
            found = self.resolve(base, name)
            if found is not None:
                return found
        return None


def image_files(directory: Path, *, recursive: bool = False) -> list[Path]:
    """Image files under ``directory`` (sorted; hidden files and directories left out)."""
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath)
            found.extend(base / f for f in filenames if not f.startswith(".") and is_image_name(f))
    else:
        with os.scandir(directory) as it:
            found = [
                Path(e.path)
                for e in it
                if e.is_file() and not e.name.startswith(".") and is_image_name(e.name)
            ]
    return sorted(found)


def ordered_unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def numbered_query_ids(texts: Iterable[str]) -> dict[str, str]:
    """text -> query id ``q000000``, ``q000001``... by order, for formats whose queries are bare
    texts (track2, evalscope, csv). The same file always gives the same ids."""
    return {text: f"q{i:06d}" for i, text in enumerate(ordered_unique(texts))}
