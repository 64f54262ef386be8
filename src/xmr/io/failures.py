"""What a failed write is: telling the system refusing a write from a bug, naming the file in it.

A full disk, a permission refused or an I/O error reaches the user as one :class:`WriteError`
line naming the file they asked to write, whichever library did the writing (Python's files,
faiss, torch, safetensors, transformers). The atomic writers in :mod:`xmr.io.atomic` use these
helpers; so does every writer that goes past them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from xmr.errors import XmrError

__all__ = [
    "WRITE_FAILURES",
    "WriteError",
    "failure_reason",
    "is_write_failure",
    "write_error",
    "write_failures_named",
    "writing",
]


class WriteError(XmrError, OSError):
    """Writing an output failed (a full disk, a permission refused, an I/O error): names the
    file that could not be written. Raised by the atomic writers, which leave the previous version
    of the output in place and no temporary behind. It is an OSError too (``errno`` is the
    system's, when there is one), so code that catches OSError for a full disk still does."""

    def __init__(self, path: str, reason: str, errno: int | None = None) -> None:
        self.message = f"{path}: {reason}"
        super().__init__(self.message)
        self.path = str(path)
        self.reason = reason
        self.errno = errno
        self.strerror = reason
        self.filename = self.path

    def __str__(self) -> str:
        return self.message


# What a failed write raises: OSError from Python's own I/O, RuntimeError from C++ writers
# (faiss' "write error in F: ... (No space left on device)", torch's PytorchStreamWriter), and
# safetensors' SafetensorError ("I/O error: No space left on device (os error 28)"), told by its
# name so that safetensors is not imported here.
WRITE_FAILURES = (OSError, RuntimeError)
_SAFETENSORS_IO = re.compile(r"I/O error: (?P<reason>.*?)(?: \(os error \d+\))?$")


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the system refusing a write (see ``WRITE_FAILURES``), not a bug or a
    data error."""
    if isinstance(exc, XmrError):
        return False
    if isinstance(exc, WRITE_FAILURES):
        return True
    return type(exc).__name__ == "SafetensorError" and bool(_SAFETENSORS_IO.search(str(exc)))


_FAISS_LOCATION = re.compile(r"^Error in .*? at \S+:\d+: (?:Error: '.*?' failed: )?")
_TRAILING_REASON = re.compile(r"\(([A-Z][^()]*)\)$")


def failure_reason(exc: BaseException) -> str:
    """Why a write failed, in one line: an OSError's ``strerror`` (``No space left on device``),
    or what a C++ library's RuntimeError says without its source location."""
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    text = " ".join(str(exc).split())
    io_error = _SAFETENSORS_IO.search(text)
    if io_error and type(exc).__name__ == "SafetensorError":
        return io_error["reason"]
    trailing = _TRAILING_REASON.search(text)
    if trailing and _FAISS_LOCATION.match(text):
        return trailing.group(1)  # faiss ends with the strerror: "... (No space left on device)"
    return _FAISS_LOCATION.sub("", text) or type(exc).__name__


def write_error(exc: BaseException, dest: Path, tmp: Path | None = None) -> WriteError:
    """``exc`` as a WriteError naming the file it concerns: a path inside the temporary ``tmp``
    is named as the same path under ``dest``, which is what the user asked to write."""
    name = Path(dest)
    filename = getattr(exc, "filename", None)
    if filename is not None:
        name = Path(os.fsdecode(filename))
        if tmp is not None:
            with suppress(ValueError):  # a file elsewhere keeps its own name
                name = Path(dest) / name.relative_to(tmp)
    code = next((c.errno for c in (exc, exc.__cause__) if isinstance(c, OSError)), None)
    return WriteError(str(name), failure_reason(exc), code)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised while it is written: a ``write()`` refused for a full
    disk raises an OSError without a file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


@contextmanager
def write_failures_named(dest: str | Path) -> Iterator[None]:
    """Turn a write failure inside the block into a WriteError naming ``dest`` (for writers that
    go past Python's files: transformers' ``save_pretrained``, safetensors, torch)."""
    try:
        yield
    except Exception as exc:
        if is_write_failure(exc):
            raise write_error(exc, Path(dest)) from exc
        raise
