"""How images are fed to the model: decoding workers and batch size chosen from the machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class LoaderChoice:
    """How images are fed to the model: decoding workers, batch size, and why."""

    workers: int
    batch_size: int
    reason: str


def choose_loader(
    device: Any, workers: int | None = None, batch_size: int | None = None
) -> LoaderChoice:
    """Worker count and batch size from the machine, where not given.

    On a GPU every core but one decodes (the model needs one to launch kernels), up to 16, and
    batches are 256 (an H200 runs a ViT-B/16 far faster than one core decodes). On a CPU the
    model and the decoders share the cores: half of them decode (at least one when there are
    two), batches are 64.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    gpu = getattr(device, "type", str(device)) == "cuda"
    why = []
    if workers is None:
        workers = min(16, cores - 1) if gpu else (cores // 2 if cores > 1 else 0)
        why.append(f"{cores} CPU core(s), {'a GPU' if gpu else 'model on the CPU'}")
    if batch_size is None:
        batch_size = 256 if gpu else 64
    return LoaderChoice(int(workers), int(batch_size), "; ".join(why) or "as given")
