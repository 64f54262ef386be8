"""Library errors in command-line terms.

The library names what went wrong in its own terms, a parameter as ``name=`` (``"choose a split
with split= (...)"``), so a Python caller reads the argument to pass. The command line prints
the same error with each such parameter spelt as the flag that sets it (``--split``), found
from the parser itself, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import re

# ``name=`` and, for a switch, ``name=True`` (spelt as the bare flag).
_PARAM = re.compile(r"(?<![^\s(])([a-z][a-z0-9_]*)=(True\b)?")


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Parameter (``dest``) -> its long flag, over the parser and all its subcommands; the first
    spelling found wins (one spelling per concept is checked by the CLI consistency test)."""
    flags: dict[str, str] = {}
    stack = [parser]
    while stack:
        p = stack.pop(0)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
                continue
            long = [o for o in action.option_strings if o.startswith("--")]
            if long and action.dest not in flags:
                flags[action.dest] = long[0]
    return flags


def in_cli_terms(message: str, flags: dict[str, str]) -> str:
    """``message`` with every ``name=`` of a known parameter as its flag: ``split=`` ->
    ``--split``, ``images=DIR`` -> ``--images DIR``, ``upsert=True`` -> ``--upsert``."""

    def flag(m: re.Match) -> str:
        name = m.group(1)
        if name not in flags:
            return m.group(0)
        if m.group(2):
            return flags[name]
        rest = message[m.end() : m.end() + 1]
        return flags[name] + (" " if rest and (rest.isalnum() or rest in "/.~") else "")

    return _PARAM.sub(flag, message)
