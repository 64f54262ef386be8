"""Shared fixtures. Tests never download: they generate data and tiny random models."""

from __future__ import annotations

import os

# Belt and braces: nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As `xmr` itself does (xmr.cli.main), before any test module imports torch: OpenMP threads that
# spin while waiting stall each other when the cores are busy (a 10x slower training step on a
# loaded 2-core machine); sleeping threads do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
