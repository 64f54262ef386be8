"""Base helpers every layer may use: atomic writes, write failures named as one line, JSON /
JSON lines, text files with file:line errors, output-directory checks and provenance stamps.

Nothing here knows about data sets, models or indexes; it imports only :mod:`xmr.errors`.
"""

from xmr.io.atomic import (
    atomic_replace_dir,
    atomic_write,
    atomic_write_json,
    check_output_dir,
    check_output_file,
    ensure_parent,
    fsync_dir,
    remove_abandoned,
    temp_path,
)
from xmr.io.failures import (
    WriteError,
    is_write_failure,
    write_error,
    write_failures_named,
    writing,
)
from xmr.io.jsonio import read_json, read_jsonl, write_jsonl
from xmr.io.outdirs import prepare_output_dir
from xmr.io.provenance import now, xmr_version
from xmr.io.textfiles import BadRecords, iter_lines, load_json, open_binary, read_text

__all__ = [
    "WriteError",
    "BadRecords",
    "atomic_replace_dir",
    "atomic_write",
    "atomic_write_json",
    "check_output_dir",
    "check_output_file",
    "ensure_parent",
    "fsync_dir",
    "is_write_failure",
    "iter_lines",
    "load_json",
    "now",
    "open_binary",
    "prepare_output_dir",
    "read_json",
    "read_jsonl",
    "read_text",
    "remove_abandoned",
    "temp_path",
    "write_error",
    "write_failures_named",
    "write_jsonl",
    "writing",
    "xmr_version",
]
