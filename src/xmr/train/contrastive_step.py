"""One optimiser step of contrastive training, apart from the loop that feeds it.

:class:`ContrastiveStep` takes the ``accum_steps`` micro-batches of one step (pixels, tokens and
relevance-group keys, already on the device), computes the loss against the features gathered
from every rank, back-propagates and updates. Two accumulation modes (``accum_mode``):

* ``gradients``: each micro-batch is its own contrastive batch; gradients of ``loss / k`` sum.
* ``features`` (open_clip's scheme): the features of all micro-batches first (no grad), then
  each micro-batch again with grad against the cached rest, so the loss is that of one batch
  ``accum_steps`` times the size and the summed gradients are exactly its gradient.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from xmr.models.base import PRECISIONS
from xmr.train.distributed import DistInfo, all_reduce_mean, gather_no_grad, gather_with_grad
from xmr.train.optim import optimizer_update

# One micro-batch: (pixels, tokens, keys), on the device.
MicroBatch = tuple[Any, Any, torch.Tensor]


def autocast(precision: str, device: torch.device):
    """Mixed-precision autocast for ``precision`` (fp16 / bf16), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


class ContrastiveStep:
    """The step: forward, loss, backward and the optimiser update.

    Args:
        module: the ``TwoTower`` module (its ``clamp_logit_scale`` runs after each update).
        loss_fn: a registered contrastive loss (``xmr.train.losses``).
        optimizer, scheduler, scaler: the optimiser, its schedule, the fp16 GradScaler (or None).
        params: the trained parameters (clipped together).
        info: the process group (rank, world size, device).
        precision: fp32, fp16 or bf16.
        accum_mode: "features" or "gradients".
        grad_clip: max global gradient norm (None/0: none).
        max_logit_scale: the temperature's cap.
        ddp: the ``DistributedDataParallel`` wrapper of ``module`` under torchrun.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: Any,
        params: list[torch.nn.Parameter],
        info: DistInfo,
        *,
        precision: str,
        accum_mode: str,
        grad_clip: float | None,
        max_logit_scale: float,
        ddp: Any = None,
    ) -> None:
        self.module = module
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.params = params
        self.info = info
        self.precision = precision
        self.accum_mode = accum_mode
        self.grad_clip = grad_clip
        self.max_logit_scale = max_logit_scale
        self.ddp = ddp

    def __call__(self, micro: list[MicroBatch]) -> float:
        """One optimiser step over the micro-batches; returns the loss (mean over ranks)."""
        runner = self.ddp if self.ddp is not None else self.module
        if len(micro) == 1 or self.accum_mode == "gradients":
            total = self._accumulate_gradients(micro, runner)
        else:
            total = self._accumulate_features(micro, runner)
        optimizer_update(
            self.optimizer,
            self.params,
            grad_clip=self.grad_clip,
            scaler=self.scaler,
            scheduler=self.scheduler,
        )
        self.module.clamp_logit_scale(self.max_logit_scale)
        return all_reduce_mean(total, self.info.device)

    def clear_gradients(self) -> None:
        """Drop the gradients of a step cut short (before saving its predecessor's state)."""
        for p in self.params:
            p.grad = None

    def _autocast(self):
        return autocast(self.precision, self.info.device)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _sync_context(self, j: int, k: int):
        """DDP all-reduces the gradients on the last micro-batch only."""
        if self.ddp is None or j == k - 1:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _accumulate_gradients(self, micro: list[MicroBatch], runner) -> float:
        k = len(micro)
        b = micro[0][2].shape[0]
        total = 0.0
        for j, (pixels, tokens, keys) in enumerate(micro):
            with self._sync_context(j, k):
                with self._autocast():
                    image, text, scale, bias = runner(pixels, tokens)
                loss = self.loss_fn(
                    image,
                    text,
                    gather_with_grad(image),
                    gather_with_grad(text),
                    keys,
                    gather_no_grad(keys),
                    scale,
                    bias,
                    self.info.rank * b,
                )
                self._backward(loss / k)
            total += float(loss.detach()) / k
        return total

    def _accumulate_features(self, micro: list[MicroBatch], runner) -> float:
        """open_clip's accumulation (see the module docstring). The temperature (used in every
        pass) gets its gradient from the last pass only."""
        k = len(micro)
        b = micro[0][2].shape[0]
        rank, world = self.info.rank, self.info.world_size
        with torch.no_grad(), self._autocast():
            cached = [self.module(pixels, tokens)[:2] for pixels, tokens, _ in micro]
        image_cols = [gather_no_grad(c[0]) for c in cached]
        text_cols = [gather_no_grad(c[1]) for c in cached]
        keys_rows = torch.cat([m[2] for m in micro])
        keys_cols = torch.cat([gather_no_grad(m[2]) for m in micro])
        offsets = torch.arange(b, device=self.info.device)
        row_index = torch.cat([j * world * b + rank * b + offsets for j in range(k)])
        loss = None
        for j, (pixels, tokens, _keys) in enumerate(micro):
            with self._sync_context(j, k):
                with self._autocast():
                    image, text, scale, bias = runner(pixels, tokens)
                if j < k - 1:
                    scale = scale.detach()
                    bias = bias.detach() if bias is not None else None
                image_rows = torch.cat([image if i == j else cached[i][0] for i in range(k)])
                text_rows = torch.cat([text if i == j else cached[i][1] for i in range(k)])
                image_all = torch.cat(
                    [gather_with_grad(image) if i == j else image_cols[i] for i in range(k)]
                )
                text_all = torch.cat(
                    [gather_with_grad(text) if i == j else text_cols[i] for i in range(k)]
                )
                loss = self.loss_fn(
                    image_rows,
                    text_rows,
                    image_all,
                    text_all,
                    keys_rows,
                    keys_cols,
                    scale,
                    bias,
                    row_index,
                )
                self._backward(loss)
        return float(loss.detach())
