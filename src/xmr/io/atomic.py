"""Atomic writes: a reader sees the old file or directory or the new one, never a half-written one.

Temporary files and directories are created beside their destination with the permissions a
plain ``open``/``mkdir`` would give (the umask applies), and named after the process that
writes them, so the leftovers of a killed writer can be told from the work of a live one and
are cleaned up by the next write of the same destination.

A write that fails (a full disk, a permission refused, an I/O error; from Python or from a C++
library such as faiss or torch) removes its temporary, leaves the previous version in place, and
raises :class:`~xmr.io.failures.WriteError` naming the destination file (``INDEX_DIR/index.faiss``,
not the hidden temporary) with the system's reason: the CLI prints that as one line.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.io.failures import is_write_failure, write_error

__all__ = [  # the write-failure helpers live in xmr.io.failures
    "atomic_replace_dir",
    "atomic_write",
    "atomic_write_json",
    "check_output_dir",
    "check_output_file",
    "ensure_parent",
    "remove_abandoned",
    "temp_path",
]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_parent(path: Path) -> Path:
    """Create ``path``'s parent directory; a file in the way is an error naming it."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise XmrError(f"{path}: cannot create it, a file is in the way of {parent}") from None
    except OSError as exc:
        raise XmrError(f"{path}: cannot create {parent} ({exc.strerror})") from None
    return parent


def check_output_file(path: str | Path) -> Path:
    """Fail before any work when ``path`` cannot become a file (it is a directory, or a file
    stands where its directory should be)."""
    path = Path(path)
    if path.is_dir():
        raise XmrError(f"{path}: is a directory; name a file to write")
    _refuse_file_in_the_way(path)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Fail before any work when ``path`` exists and is not a directory, or a file stands where
    one of its parent directories should be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise XmrError(f"{path}: exists and is not a directory")
    _refuse_file_in_the_way(path)
    return path


def _refuse_file_in_the_way(path: Path) -> None:
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise XmrError(
                    f"{path}: cannot create it: a file is in the way ({ancestor} is a file)"
                )
            return


def _temp_name(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_path(directory: Path, prefix: str, suffix: str = "") -> Path:
    """A fresh name ``{prefix}{pid}-{random}{suffix}`` in ``directory``; see
    :func:`remove_abandoned`."""
    return Path(directory) / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


_WRITER = re.compile(r"[.-](?P<pid>\d+)-[0-9a-f]{8}(?:\.tmp)?$")


def remove_abandoned(directory: Path, prefix: str) -> None:
    """Delete the temporaries ``{prefix}...{pid}-{random}`` in ``directory`` whose writing
    process is gone (killed while writing): they would stay forever, as big as what they held."""
    try:
        candidates = [p for p in Path(directory).iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for path in candidates:
        match = _WRITER.search(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with suppress(OSError):  # best effort: a read-only directory reports itself later
                path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``. A failed write is a :class:`~xmr.io.failures.WriteError` naming ``path``; ``path`` is
    then as it was, and the temporary is gone."""
    path = Path(path)
    if path.is_dir():
        raise XmrError(f"{path}: is a directory; cannot write a file there")
    ensure_parent(path)
    remove_abandoned(path.parent, f".{path.name}.")  # what a killed writer of `path` left
    tmp = temp_path(path.parent, f".{path.name}.", ".tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp)
        if is_write_failure(exc):
            raise write_error(exc, path, tmp) from exc
        raise
    fsync_dir(path.parent)


def _discard(tmp: Path) -> None:
    with suppress(OSError):  # it could not be created, or its directory is read-only now
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_replace_dir(
    dest: str | Path, fill: Callable[[Path], None], *, may_replace: Callable[[Path], bool]
) -> None:
    """Fill a new directory beside ``dest`` with ``fill(tmp)``, then swap it in for ``dest``.
    A failed write is a :class:`~xmr.io.failures.WriteError` naming ``dest`` or the file of it that
    could not be written (``fill`` should write under :func:`writing`).

    On Linux the two directories are exchanged in one ``renameat2(RENAME_EXCHANGE)``, so
    ``dest`` always exists; elsewhere the old one is renamed aside first (a killed process can
    leave it there, and the next write of ``dest`` puts it back). A failure before the swap
    leaves ``dest`` untouched; ``may_replace(dest)`` guards against replacing a directory that
    is not ours (a user's folder given as ``--out`` by mistake). What killed writers left
    beside ``dest`` is removed first.
    """
    dest = Path(dest)
    parent = ensure_parent(dest)
    _recover_leftovers(dest)
    if dest.exists() and not (dest.is_dir() and (not any(dest.iterdir()) or may_replace(dest))):
        raise XmrError(f"{dest}: exists and is not an xmr index; refusing to replace it")
    tmp = _temp_name(dest, "new")
    try:
        os.mkdir(tmp, 0o777)
    except OSError as exc:
        raise write_error(exc, dest, tmp) from exc
    try:
        fill(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if dest.exists():
            if _exchange(tmp, dest):
                fsync_dir(parent)
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
                return
            old = _temp_name(dest, "old")
            os.rename(dest, old)
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
        fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(exc):
            raise write_error(exc, dest, tmp) from exc
        raise


_LEFTOVER = re.compile(r"\.(?P<tag>new|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _recover_leftovers(dest: Path) -> None:
    """Delete the half-written ``.NAME.new-PID-*`` directories of writers that are gone, and the
    ``.NAME.old-PID-*`` a killed swap left: put back when ``dest`` is missing, else deleted."""
    prefix = f".{dest.name}."
    try:
        siblings = [p for p in dest.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for path in siblings:
        match = _LEFTOVER.fullmatch(path.name[len(prefix) - 1 :])
        if not match or _alive(int(match["pid"])) or not path.is_dir():
            continue
        if match["tag"] == "old" and not dest.exists():
            os.rename(path, dest)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # a file system (or kernel) without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))
