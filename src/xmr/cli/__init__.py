"""The ``xmr`` command: parse arguments, call the library, print. No logic of its own.

Each subcommand lives in ``xmr/cli/<name>.py`` with ``add_parser(subparsers)`` that sets
``func(args) -> int``; the options that several commands share come from
:mod:`xmr.cli.options`, spelt one way. Errors from bad user input (XmrError) print one line,
exit 2; usage errors are argparse's (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from xmr.cli.error_terms import in_cli_terms, option_flags
from xmr.cli.options import ArgumentParser
from xmr.errors import XmrError

# Subcommand modules, in the order `xmr --help` lists them. A module that is absent (a stage not
# built yet) is simply not offered.
COMMAND_MODULES = [
    "data",
    "model",
    "encode",
    "index",
    "search",
    "evaluate",
    "compare",
    "predict",
    "similarity",
    "caption",
    "translate",
    "train",
    "t2i",
    "serve",
    "demo",
    "report",
]


def build_parser() -> argparse.ArgumentParser:
    from xmr import __version__

    parser = ArgumentParser(prog="xmr", description="Cross-modal retrieval toolkit.")
    parser.add_argument("--version", action="version", version=f"xmr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"xmr.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"xmr.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the modules named in ``XMR_PLUGINS`` (comma-separated), so that the readers,
    encoder/index backends, cross-encoders and losses they register work from the command line
    (``--format NAME``, ``--model NAME:...``, ``loss=NAME``)."""
    spec = os.environ.get("XMR_PLUGINS", "") if spec is None else spec
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise XmrError(f"XMR_PLUGINS: cannot import plugin module '{name}' ({exc})") from None
    return names


def main(argv: list[str] | None = None) -> int:
    # Before anything loads torch (OpenMP reads this once, when it loads): idle OpenMP threads
    # sleep instead of spinning. Spinning threads that the OS deschedules on a busy machine
    # stall each other; a training step on 2 busy cores took 10x longer (benchmarks/RESULTS.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line as given, for the provenance reports record (main() may be called).
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        load_plugins()
        return int(args.func(args) or 0)
    except XmrError as exc:
        # The library names parameters (split=); the user typed flags (--split).
        print(f"xmr: error: {in_cli_terms(str(exc), option_flags(parser))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "xmr: interrupted; finished work is kept and the job resumes when re-run",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # The library names bad paths itself; what still escapes is the system refusing a read
        # or a write (permissions, a full disk): one line naming the file, not a traceback.
        print(f"xmr: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


def describe_os_error(exc: OSError) -> str:
    """``FILE: reason`` (``FILE -> OTHER: reason`` for a rename) for an OSError."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    where = str(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    return f"{where}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
