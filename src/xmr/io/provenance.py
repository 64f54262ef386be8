"""What every artefact records about who made it and when (manifests, configs, reports)."""

from __future__ import annotations

import time


def now() -> str:
    """Local time with its UTC offset, ``2026-12-01T20:48:42+0000``: manifests are read by people."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def xmr_version() -> str:
    """The installed xmr's version (read lazily: ``xmr/__init__`` imports nothing heavy)."""
    from xmr import __version__

    return __version__
