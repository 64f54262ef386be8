"""What contrastive training writes besides checkpoints: the output directory check, the
exported model (transformers' layout, file by file) and the run summary ``metrics.json``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xmr.io.atomic import atomic_write, remove_abandoned, temp_path
from xmr.io.outdirs import prepare_output_dir
from xmr.train import checkpoint as ckpt
from xmr.train.config import CONFIG_FILE

SUMMARY_FILE = "metrics.json"


def is_training_run(out: Path) -> bool:
    """Whether ``out`` holds an earlier training run (its config or a checkpoint)."""
    return (out / CONFIG_FILE).exists() or ckpt.last_checkpoint(out).exists()


def check_out_dir(out: Path) -> None:
    """``out`` must be new, empty, or an earlier run's output: a data set or a model directory
    given as the output by mistake would get a model and logs written into it."""
    prepare_output_dir(out, is_ours=is_training_run, what="an earlier training run")


def export_model(encoder, out: Path) -> None:
    """Save ``encoder`` into ``out`` (transformers' layout) file by file with atomic renames:
    weights first and ``config.json`` last, so a reader never finds a config without weights."""
    out.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out, ".export-")  # what a killed export left
    tmp = temp_path(out, ".export-")
    tmp.mkdir()
    try:
        encoder.save(tmp)
        for path in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``out/metrics.json``, atomically (numpy scalars as numbers)."""
    text = json.dumps(summary, indent=2, default=_json_default) + "\n"
    atomic_write(out / SUMMARY_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
