"""Training checkpoints that resume exactly, written atomically.

``checkpoints/last.pt`` holds everything the next step depends on: the model's and the loss
module's parameters, the optimiser (AdamW moments), the LR scheduler, the fp16 GradScaler, every
RNG (Python, NumPy, torch CPU and CUDA), the data position (epoch, step within the epoch, global
step) and the best-metric bookkeeping. It is written to a temporary file in the same directory,
fsynced and renamed over the old one, so a run killed mid-write keeps the previous checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``
    (:func:`xmr.io.atomic.atomic_write`, which also removes what a killed save left)."""

    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    atomic_write(path, write)
    return path


def last_checkpoint(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / LAST


def save_checkpoint(
    out_dir: str | os.PathLike,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    progress: dict[str, Any],
    config: dict[str, Any],
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``out_dir/checkpoints/last.pt`` atomically. ``rng``: every rank's RNG states in
    rank order (default: this process's)."""
    state = {
        "format_version": FORMAT_VERSION,
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng if rng is not None else [rng_state()],
        "progress": dict(progress),
        "config": dict(config),
    }
    return atomic_torch_save(state, last_checkpoint(out_dir))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        # weights_only=False: the checkpoint holds RNG states (tuples, numpy arrays) that the
        # safe unpickler refuses; it is a file this program wrote into the user's own output dir.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated, garbage, not a pickle: all unreadable
        reason = str(exc).split(". ")[0] or type(exc).__name__
        raise XmrError(
            f"{path}: cannot read the training checkpoint ({reason}); delete it or pass "
            "resume=false to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise XmrError(f"{path}: not an xmr training checkpoint (version {FORMAT_VERSION})")
    return state


def restore(
    state: dict[str, Any],
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rank: int = 0,
) -> dict[str, Any]:
    """Load a checkpoint's states into the live objects; returns its progress dict. Each rank
    takes its own RNG states (rank 0's when the checkpoint has fewer ranks)."""
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return dict(state["progress"])
