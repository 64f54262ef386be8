"""The optimiser update every trainer ends its step with (one place for clipping, AMP scaling,
the schedule and clearing the gradients)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def optimizer_update(
    optimizer: Any,
    params: Iterable[Any],
    *,
    grad_clip: float | None = None,
    scaler: Any = None,
    scheduler: Any = None,
) -> None:
    """Apply the accumulated gradients: unscale (``scaler``: a ``torch.amp.GradScaler``), clip
    the global norm to ``grad_clip`` (None/0: no clipping), step the optimiser and the
    ``scheduler``, and set the gradients to None for the next step."""
    import torch

    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
