"""Shared fixtures. Tests never download: they generate data and tiny random models."""

from __future__ import annotations

import os

# Belt and braces: nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
