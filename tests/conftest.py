"""Shared fixtures. Tests never download: they generate data and tiny random models.

The session fixtures below are what many files would otherwise build each on their own (a tiny
CLIP, the service's index, the report data set); a test must not change what they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Belt and braces: nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As `xmr` itself does (xmr.cli.main), before any test module imports torch: OpenMP threads that
# spin while waiting stall each other when the cores are busy (a 10x slower training step on a
# loaded 2-core machine); sleeping threads do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --- what many test files build: once per session, read-only for the tests ----------------------


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """The tiny random CLIP most tests embed with (``builders.tiny_model``: seed 0, 32-d), saved
    once in transformers' layout; returns its directory. Tests only read it (a test that trains
    or re-saves a model writes elsewhere); a variant (another seed or width) builds its own."""
    pytest.importorskip("transformers")
    from builders import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture(scope="session")
def serve_index(tmp_path_factory) -> dict:
    """The service's index (``serve_index.build_index_dir``: images, a tiny CLIP, its embeddings
    directory and a Flat index), built with the real pipeline once for every service test."""
    pytest.importorskip("transformers")
    pytest.importorskip("faiss")
    from serve_index import build_index_dir

    return build_index_dir(tmp_path_factory.mktemp("serve-index"))


@pytest.fixture(scope="session")
def report_data(tmp_path_factory) -> dict:
    """The report tests' data set (``report_helpers.synth_split``: ``xmr data synth``, 30 test
    images, the first text HTML): ``{"root": data directory, "split": its test split}``."""
    from report_helpers import synth_split

    root = tmp_path_factory.mktemp("report-data") / "ds"
    return {"root": root, "split": synth_split(root)}
