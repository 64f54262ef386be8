"""What every trainer returns: one :class:`TrainResult` for contrastive, fusion and ITM training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        trainer: "contrastive", "fusion" or "itm".
        out_dir: where the trained model was written (None when the caller saves it).
        global_step / total_steps: optimiser steps done / planned.
        best_metric, best_value, best_step: the model selection by the evaluator's primary
            metric (None without an evaluator, or for a run that validated nothing).
        baseline: the primary metric before any training (fusion: the weighted sum it starts
            from), when measured.
        metrics: the last validation's metrics.
        history: every validation (``step``, ``epoch`` and the metrics).
        losses: the training loss of each logged unit, oldest first (contrastive: each log
            window of this run; fusion: each epoch; ITM: each step).
        last_loss: the latest training loss (contrastive: of the last log window, kept across a
            resume).
        interrupted: stopped before ``total_steps`` (``stop_after_steps`` or Ctrl-C).
        samples_per_s: mean training throughput of this run (all ranks together).
        seconds: wall time of the training part of this run.
        model: the trained object (the encoder, the ``GatedFusion``, the cross-encoder).
        details: what only one trainer has (fusion: ``best_epoch``, ``selected_on``; ITM:
            ``negatives``).
        summary: the JSON-ready summary ``xmr train --json`` prints.
    """

    trainer: str
    out_dir: Path | None = None
    global_step: int = 0
    total_steps: int = 0
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    baseline: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    last_loss: float | None = None
    interrupted: bool = False
    samples_per_s: float = 0.0
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def first_loss(self) -> float | None:
        """The earliest training loss of this run (None when it trained no step)."""
        return self.losses[0] if self.losses else None
