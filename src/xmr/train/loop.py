"""The training loop: ``train(TrainConfig)`` is ``xmr train``.

The output directory ``OUT`` becomes a model that ``hf:OUT`` (and transformers) loads directly,
the best one by the validation metric (the last one without validation), plus::

    OUT/train_config.json        the resolved configuration (TrainConfig.from_dict reads it back)
    OUT/train_log.{jsonl,csv}    loss, learning rate, temperature, samples/s every log_every steps
    OUT/metrics.{jsonl,csv}      validation metrics at every validation
    OUT/metrics.json             summary: best metric, its value and step, final metrics, history
    OUT/checkpoints/last.pt      the exact training state (resume)
    OUT/last/                    the last model, when it is not the best one (end of training)
    OUT/tensorboard/             TensorBoard events, when tensorboard is installed

Interrupting (Ctrl-C) saves a checkpoint at the last finished step; running the same command
again continues from it and ends with the same weights an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.errors import XmrError
from xmr.train import checkpoint as ckpt
from xmr.train.config import CONFIG_FILE, TrainConfig, trajectory_differences
from xmr.train.data import (
    BatchPlan,
    TrainImageDataset,
    cache_size_mb,
    cached_image_loader,
    example_keys,
    image_loader,
    preprocess_all,
    training_examples,
)
from xmr.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    gather_no_grad,
    gather_with_grad,
    init_distributed,
)
from xmr.train.logs import MetricLog, TensorBoard
from xmr.train.losses import create_loss
from xmr.train.model import (
    TwoTower,
    cosine_schedule,
    enable_grad_checkpointing,
    freeze,
    param_groups,
)
from xmr.train.validate import Validator, check_best_metric, default_best_metric, is_better

log = logging.getLogger(__name__)

SUMMARY_FILE = "metrics.json"


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        out_dir: the output directory (a loadable model).
        global_step / total_steps: optimiser steps done / planned.
        best_metric, best_value, best_step: the model selection (None without validation).
        metrics: the last validation's metrics.
        history: every validation (``step``, ``epoch`` and the metrics).
        last_loss: mean training loss of the last logged steps.
        interrupted: stopped before ``total_steps`` (``stop_after_steps`` or Ctrl-C).
        samples_per_s: mean training throughput of this run (all ranks together).
    """

    out_dir: Path
    global_step: int
    total_steps: int
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    last_loss: float | None = None
    interrupted: bool = False
    samples_per_s: float = 0.0


def train(
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    stop_after_steps: int | None = None,
    **fields: Any,
) -> TrainResult:
    """Fine-tune a two-tower model contrastively (see ``TrainConfig`` for every option).

    Args:
        config: a ``TrainConfig`` (or a dict of its fields); ``fields`` override it.
        stop_after_steps: stop (with a checkpoint) after this many optimiser steps of this run,
            as if interrupted; running again resumes.

    Returns:
        A ``TrainResult``. Under ``torchrun`` every rank returns one; rank 0's is the one that
        wrote the files.
    """
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if fields:
        config = config.replace(**fields)
    config.validate()
    info = init_distributed(config.device)
    try:
        return _Run(config, info, stop_after_steps).run()
    finally:
        cleanup_distributed(info)


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def export_model(encoder, out: Path) -> None:
    """Save ``encoder`` into ``out`` (transformers' layout) file by file with atomic renames:
    weights first and ``config.json`` last, so a reader never finds a config without weights."""
    from xmr.index.atomic import remove_abandoned, temp_path

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


class _Run:
    def __init__(self, cfg: TrainConfig, info: DistInfo, stop_after_steps: int | None) -> None:
        self.cfg = cfg
        self.info = info
        self.main = info.is_main
        self.stop_after = stop_after_steps
        self.out = Path(cfg.out)
        self.device = info.device
        self.say = _say if (self.main and cfg.progress) else (lambda _m: None)
        self.warned_images: set[int] = set()

    # ---- set-up -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg = self.cfg
        if self.main:
            check_out_dir(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
        state = self._checkpoint_to_resume()
        self._seed(cfg.seed + self.info.rank)

        from xmr.data.readers import load_dataset
        from xmr.models import create_encoder
        from xmr.models.base import resolve_precision

        dataset = load_dataset(
            cfg.data, cfg.format, split=cfg.split, images=cfg.images, skip_bad=cfg.skip_bad
        )
        if self.main and dataset.skipped_warning():
            self.say(f"warning: {dataset.skipped_warning(cfg.data)}")
        self.skipped = dataset.skip_record()
        self.examples = training_examples(
            dataset.split(cfg.split), cfg.max_train_items, cfg.text_source
        )
        self.best_metric = cfg.best_metric or default_best_metric(dataset.format)
        self.validator = self._validator(dataset.format)
        if self.main and self.validator is not None:
            # Before any training: a metric validation never reports used to fail at the end of
            # the first epoch, with nothing saved.
            check_best_metric(self.best_metric, self.validator.categories())

        self.precision = resolve_precision(cfg.precision, self.device)
        self.encoder = create_encoder(cfg.model, device=str(self.device), precision=self.precision)
        self.module = TwoTower(self.encoder, cfg)
        frozen = freeze(self.module, cfg)
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(self.encoder.model)
        self.module.to(self.device)
        self.module.train()
        self.loss_fn = create_loss(cfg.loss, cfg.multi_positive)

        self._prepare_images()
        self.plan = BatchPlan(
            [len(e.texts) for e in self.examples],
            cfg.batch_size,
            self.info.world_size,
            cfg.accum_steps,
            cfg.seed,
        )
        self.total_steps = self.plan.steps_per_epoch * cfg.epochs
        warmup = cfg.warmup_steps
        if warmup is None:
            warmup = int(round(cfg.warmup_ratio * self.total_steps))

        groups, group_infos = param_groups(self.module, cfg)
        if not groups:
            raise XmrError("nothing to train: every parameter is frozen")
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_schedule(self.total_steps, warmup, cfg.min_lr_ratio)
        )
        self.scaler = None
        if self.precision == "fp16" and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")

        self.train_log = MetricLog(self.out, "train_log")
        self.metric_log = MetricLog(self.out, "metrics")
        self.progress = {
            "epoch": 0,
            "step": 0,
            "global_step": 0,
            "best_value": None,
            "best_step": None,
            "last_metrics": {},
            "elapsed_s": 0.0,
            "samples": 0,
            "global_batch": self.plan.step_size,
            "train_examples": len(self.examples),
        }
        if state is not None:
            saved = state["progress"]
            for key in ("global_batch", "train_examples"):
                if key in saved and saved[key] != self.progress[key]:
                    raise XmrError(
                        f"{self.out}: the checkpoint was trained with {key.replace('_', ' ')} "
                        f"{saved[key]}, this run has {self.progress[key]} (same data, batch size "
                        "and number of processes are needed to resume; resume=false starts over)"
                    )
            self.progress.update(
                ckpt.restore(
                    state,
                    module=self.module,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    scaler=self.scaler,
                    rank=self.info.rank,
                )
            )
            self.say(
                f"resuming from {ckpt.last_checkpoint(self.out)} at step "
                f"{self.progress['global_step']}/{self.total_steps}"
            )
        self.history: list[dict[str, Any]] = []
        if self.main:
            if state is not None:
                self.train_log.truncate_after(self.progress["global_step"])
                self.history = self.metric_log.truncate_after(self.progress["global_step"])
            else:
                self.train_log.reset()
                self.metric_log.reset()
            derived = {
                "world_size": self.info.world_size,
                "global_batch": self.plan.step_size,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "total_steps": self.total_steps,
                "warmup_steps": warmup,
                "train_examples": len(self.examples),
                "dataset_format": dataset.format,
                **self.skipped,
                "precision": self.precision,
                "param_groups": {g.name: g.n_params for g in group_infos},
                "frozen_params": frozen,
            }
            resolved = cfg.replace(
                best_metric=self.best_metric, extra={**cfg.extra, "derived": derived}
            )
            (self.out / CONFIG_FILE).write_text(resolved.to_json(), encoding="utf-8")
        self.say(
            f"training {cfg.model} on {len(self.examples)} examples: {cfg.epochs} epoch(s) x "
            f"{self.plan.steps_per_epoch} steps, global batch {self.plan.step_size}"
            f" ({self.info.world_size} process(es)), {self.precision}, loss {cfg.loss}/"
            f"{cfg.multi_positive}" + (f", best by {self.best_metric}" if self.validator else "")
        )

        self.ddp = None
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self._freeze_unused()
            # The buffers (position ids) are constants: no need to sync them every forward.
            params = inspect.signature(DistributedDataParallel).parameters
            no_sync = (
                "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
            )
            self.ddp = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **{no_sync: False},
            )
        self.tb = TensorBoard(self.out / "tensorboard", cfg.tensorboard and self.main)
        try:
            return self._loop()
        finally:
            self.tb.close()

    def _checkpoint_to_resume(self) -> dict[str, Any] | None:
        path = ckpt.last_checkpoint(self.out)
        if self.main and path.exists() and not path.is_file():
            raise XmrError(f"{path}: is not a file; the checkpoint could never be saved there")
        # Rank 0 decides: another rank looking after rank 0 removed the file would disagree.
        if not broadcast_object(path.is_file()):
            return None
        if not self.cfg.resume:
            self.say(f"{path} exists; resume=false: starting over")
            if self.main:
                path.unlink()
                shutil.rmtree(self.out / "last", ignore_errors=True)
            barrier()
            return None
        state = ckpt.load_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"], where=str(path))
        diffs = trajectory_differences(saved, self.cfg)
        if diffs:
            raise XmrError(
                f"{self.out}: holds a checkpoint trained with other settings ({'; '.join(diffs)}); "
                "use another --out, or resume=false to start over"
            )
        return state

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _validator(self, dataset_format: str) -> Validator | None:
        from xmr.data.readers import load_dataset

        cfg = self.cfg
        validator = None
        if cfg.valid_split and self.main:
            try:
                split = load_dataset(
                    cfg.data,
                    cfg.format,
                    split=cfg.valid_split,
                    images=cfg.images,
                    skip_bad=cfg.skip_bad,
                ).split(cfg.valid_split)
                validator = Validator(
                    split,
                    batch_size=cfg.eval_batch_size,
                    workers=cfg.workers,
                    cache_max_mb=cfg.cache_max_mb,
                )
            except XmrError as exc:
                self.say(f"warning: no validation ({exc})")
        # Every rank must agree on when validations (and their barriers) happen.
        enabled = broadcast_object(validator is not None)
        return validator if self.main else (True if enabled else None)

    def _prepare_images(self) -> None:
        cfg = self.cfg
        refs = [e.image for e in self.examples]
        size = cache_size_mb(len(refs), self.encoder.preprocess)
        use_cache = cfg.cache_images == "yes" or (
            cfg.cache_images == "auto" and size is not None and size <= cfg.cache_max_mb
        )
        self.cache = None
        if not use_cache:
            return
        cache, failed = preprocess_all(refs, self.encoder.preprocess, cfg.workers)
        if failed:
            bad = {i for i, _ in failed}
            self.say(
                f"warning: {len(bad)} training image(s) could not be decoded and are left out: "
                f"{failed[0][1]}"
            )
            keep = [i for i in range(len(refs)) if i not in bad]
            self.examples = [self.examples[i] for i in keep]
            cache = cache[torch.as_tensor(keep)]
        self.cache = cache

    def _freeze_unused(self) -> None:
        """Parameters no feature depends on (e.g. a BERT pooler the CLIP head skips) would make
        DDP wait forever for their gradients: find them with one probe backward and freeze them.
        """
        examples = self.examples[:2]
        dataset = TrainImageDataset([e.image for e in examples], self.encoder.preprocess)
        pixels = [dataset[i][1] for i in range(len(examples))]
        if any(p is None for p in pixels):
            return
        from torch.utils.data import default_collate

        batch = self._to_device(default_collate(pixels))
        tokens = self._to_device(self.encoder.tokenize([e.texts[0] for e in examples]))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            image, text, scale, bias = self.module(batch, tokens)
            total = image.sum() + text.sum() + scale.sum() + (bias.sum() if bias is not None else 0)
            total.backward()
        unused = [p for p in self.params if p.grad is None]
        for p in self.params:
            p.grad = None
        for p in unused:
            p.requires_grad_(False)
        if unused:
            self.say(f"{len(unused)} parameter tensor(s) unused by the features are frozen")

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> TrainResult:
        from tqdm import tqdm

        cfg, plan, progress = self.cfg, self.plan, self.progress
        start = (progress["epoch"], progress["step"])
        if self.cache is not None:
            loader = cached_image_loader(self.cache, plan, self.info.rank, start, cfg.epochs)
        else:
            loader = image_loader(
                [e.image for e in self.examples],
                self.encoder.preprocess,
                plan,
                self.info.rank,
                start,
                cfg.epochs,
                cfg.workers,
                pin_memory=self.device.type == "cuda",
                seed=cfg.seed,
            )
        batches = iter(loader)
        bar = tqdm(
            total=self.total_steps,
            initial=progress["global_step"],
            unit="step",
            disable=not (self.main and cfg.progress),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        run_start = time.perf_counter()
        prior_elapsed = float(progress["elapsed_s"])
        run_samples = 0
        steps_this_run = 0
        window_loss: list[float] = []
        window_start = time.perf_counter()
        window_samples = 0
        interrupted = False
        in_update = False
        last_loss = progress.get("last_loss")
        hold = _InterruptAtStepEnd(enabled=not self.info.enabled)
        try:
            for epoch, step in plan.positions(start[0], start[1], cfg.epochs):
                hold.check()  # a Ctrl-C during the last step stops here, where it can be saved
                micro = [
                    self._assemble(mplan, *next(batches))
                    for mplan in plan.micro_batches(epoch, step, self.info.rank)
                ]
                in_update = True
                loss = self._step(micro)
                in_update = False
                progress["global_step"] += 1
                epoch_end = step + 1 == plan.steps_per_epoch
                progress["epoch"], progress["step"] = (
                    (epoch + 1, 0) if epoch_end else (epoch, step + 1)
                )
                progress["samples"] += plan.step_size
                run_samples += plan.step_size
                window_samples += plan.step_size
                steps_this_run += 1
                window_loss.append(loss)
                g = progress["global_step"]
                now = time.perf_counter()
                sps = window_samples / max(now - window_start, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{sps:.0f}", refresh=False)
                done = g == self.total_steps
                stop = self.stop_after is not None and steps_this_run >= self.stop_after
                if g % cfg.log_every == 0 or done or stop or epoch_end:
                    last_loss = float(np.mean(window_loss))
                    progress["last_loss"] = last_loss
                    self._log_step(g, last_loss, sps, prior_elapsed + now - run_start)
                    window_loss, window_samples, window_start = [], 0, now
                validate = self.validator is not None and (
                    (cfg.eval_every and g % cfg.eval_every == 0)
                    or (not cfg.eval_every and epoch_end)
                    or done
                )
                save = (
                    validate
                    or epoch_end
                    or done
                    or stop
                    or (cfg.save_every and g % cfg.save_every == 0)
                )
                if validate:
                    self._validate(g)
                if save:
                    progress["elapsed_s"] = prior_elapsed + time.perf_counter() - run_start
                    self._save(export=self.validator is None)
                if stop and not done:
                    interrupted = True
                    break
        except KeyboardInterrupt:
            # Under torchrun the other ranks are not at the same point (a collective would
            # hang): the last periodic checkpoint stands. One process saves where it stopped.
            hold.release()
            if not in_update and not self.info.enabled:
                for p in self.params:
                    p.grad = None
                self._save(export=False)
                if self.main:
                    _say(f"\ninterrupted: checkpoint saved at step {progress['global_step']}")
            raise
        finally:
            hold.release()
            bar.close()
            if hasattr(batches, "_shutdown_workers"):
                batches._shutdown_workers()
        elapsed = max(time.perf_counter() - run_start, 1e-9)
        return self._finish(interrupted, last_loss, run_samples / elapsed)

    def _to_device(self, batch: Any) -> Any:
        non_blocking = self.device.type == "cuda"
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=non_blocking)
        return {k: v.to(self.device, non_blocking=non_blocking) for k, v in batch.items()}

    def _assemble(self, mplan, indices, pixels, failed):
        """Pixels, tokens and group keys of one micro-batch. An image that failed to decode is
        replaced by a copy of another example of the batch (image, text and keys together, so
        the copy is a positive of its original and the batch size stays equal on every rank)."""
        position = {ex: k for k, ex in enumerate(indices)}
        for ex, err in failed:
            if ex not in self.warned_images:
                self.warned_images.add(ex)
                log.warning("training image replaced in its batch: %s", err)
        if not position:
            raise XmrError(f"no image of a training batch could be decoded: {failed[0][1]}")
        fallback = next(i for i, (ex, _t) in enumerate(mplan) if ex in position)
        rows, texts, keys = [], [], []
        for ex, t in mplan:
            if ex not in position:
                ex, t = mplan[fallback]
            example = self.examples[ex]
            rows.append(position[ex])
            texts.append(example.texts[t])
            keys.append(example_keys(example, example.texts[t]))
        index = torch.as_tensor(rows)
        if isinstance(pixels, torch.Tensor):
            if rows != list(range(len(rows))):
                pixels = pixels[index]
        else:
            pixels = {k: v[index] for k, v in pixels.items()}
        tokens = self.encoder.tokenize(texts)
        return (
            self._to_device(pixels),
            self._to_device(tokens),
            torch.tensor(keys, dtype=torch.int64, device=self.device),
        )

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        from xmr.models.base import PRECISIONS

        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _step(self, micro) -> float:
        """One optimiser step over ``accum_steps`` micro-batches; returns the loss (mean over
        ranks)."""
        cfg = self.cfg
        runner = self.ddp if self.ddp is not None else self.module
        k = len(micro)
        b = micro[0][2].shape[0]
        rank, world = self.info.rank, self.info.world_size

        def sync_context(j: int):
            if self.ddp is None or j == k - 1:
                return contextlib.nullcontext()
            return self.ddp.no_sync()

        if k == 1 or cfg.accum_mode == "gradients":
            total = 0.0
            for j, (pixels, tokens, keys) in enumerate(micro):
                with sync_context(j):
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
                        rank * b,
                    )
                    self._backward(loss / k)
                total += float(loss.detach()) / k
        else:
            total = self._step_cached_features(micro, runner, sync_context, rank, world, b)
        self._apply_update()
        return all_reduce_mean(total, self.device)

    def _step_cached_features(self, micro, runner, sync_context, rank, world, b) -> float:
        """open_clip's accumulation: features of all micro-batches first (no grad), then each
        micro-batch again with grad against the cached rest, so the loss is that of one batch
        of ``accum_steps x`` the size and the summed gradients are exactly its gradient. The
        temperature (used in every pass) gets its gradient from the last pass only."""
        k = len(micro)
        with torch.no_grad(), self._autocast():
            cached = [self.module(pixels, tokens)[:2] for pixels, tokens, _ in micro]
        image_cols = [gather_no_grad(c[0]) for c in cached]
        text_cols = [gather_no_grad(c[1]) for c in cached]
        keys_rows = torch.cat([m[2] for m in micro])
        keys_cols = torch.cat([gather_no_grad(m[2]) for m in micro])
        offsets = torch.arange(b, device=self.device)
        row_index = torch.cat([j * world * b + rank * b + offsets for j in range(k)])
        loss = None
        for j, (pixels, tokens, _keys) in enumerate(micro):
            with sync_context(j):
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

    def _apply_update(self) -> None:
        cfg = self.cfg
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.clamp_logit_scale(cfg.max_logit_scale)

    # ---- logging, validation, checkpoints ------------------------------------------------------

    def _log_step(self, step: int, loss: float, sps: float, elapsed: float) -> None:
        if not self.main:
            return
        row: dict[str, Any] = {
            "step": step,
            "epoch": round(step / self.plan.steps_per_epoch, 4),
            "loss": loss,
        }
        for group in self.optimizer.param_groups:
            row[f"lr/{group['name']}"] = group["lr"]
        row["logit_scale"] = float(self.module.logit_scale.detach().exp())
        if self.module.logit_bias is not None:
            row["logit_bias"] = float(self.module.logit_bias.detach())
        row["samples_per_s"] = sps
        row["elapsed_s"] = round(elapsed, 3)
        self.train_log.write(row)
        self.tb.scalars({k: v for k, v in row.items() if k != "step"}, step, "train/")

    def _validate(self, step: int) -> None:
        metrics: dict[str, float] | None = None
        if self.main:
            metrics = self.validator(self.encoder)
            if self.best_metric not in metrics:
                known = ", ".join(k for k in metrics if k.count("/") == 1)
                raise XmrError(f"best_metric '{self.best_metric}' is not a metric (known: {known})")
            self.module.train()
            value = metrics[self.best_metric]
            improved = is_better(self.best_metric, value, self.progress["best_value"])
            if improved:
                self.progress["best_value"] = float(value)
                self.progress["best_step"] = step
                export_model(self.encoder, self.out)
            row = {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4), **metrics}
            self.metric_log.write(row)
            self.history.append(row)
            self.tb.scalars(metrics, step, "valid/")
            self.progress["last_metrics"] = metrics
            self.say(
                f"step {step}: {self.best_metric} {value:.4f}"
                + (
                    " (best so far, saved)"
                    if improved
                    else f" (best {self.progress['best_value']:.4f})"
                )
            )
        barrier()

    def _save(self, export: bool) -> None:
        rngs = [ckpt.rng_state()]
        if self.info.enabled:
            gathered: list[Any] = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.main:
            ckpt.save_checkpoint(
                self.out,
                module=self.module,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                progress=self.progress,
                config=self.cfg.to_dict(),
                rng=rngs,
            )
            if export:
                export_model(self.encoder, self.out)
        barrier()

    def _finish(self, interrupted: bool, last_loss: float | None, sps: float) -> TrainResult:
        progress = self.progress
        g = progress["global_step"]
        if self.main and not interrupted:
            if self.validator is not None and progress["best_step"] != g:
                export_model(self.encoder, self.out / "last")
            if self.validator is None:
                export_model(self.encoder, self.out)
        result = TrainResult(
            out_dir=self.out,
            global_step=g,
            total_steps=self.total_steps,
            # A finished run resumed with validation newly turned on has validated nothing.
            best_metric=self.best_metric if progress["best_value"] is not None else None,
            best_value=progress["best_value"],
            best_step=progress["best_step"],
            metrics=dict(progress["last_metrics"]),
            history=list(self.history),
            last_loss=last_loss,
            interrupted=interrupted,
            samples_per_s=sps,
        )
        if self.main:
            summary = {
                "global_step": g,
                "total_steps": self.total_steps,
                "finished": g >= self.total_steps,
                "best_metric": result.best_metric,
                "best_value": result.best_value,
                "best_step": result.best_step,
                "final_metrics": result.metrics,
                "last_loss": last_loss,
                "history": result.history,
            }
            (self.out / SUMMARY_FILE).write_text(
                json.dumps(summary, indent=2, default=_json_default) + "\n", encoding="utf-8"
            )
            if not interrupted:
                where = "best" if self.validator is not None else "final"
                self.say(f"done: {where} model in {self.out} (load it with hf:{self.out})")
        barrier()
        return result


class _InterruptAtStepEnd:
    """Holds a Ctrl-C (SIGINT) until the step in progress is complete: a step cut short leaves
    weights and optimiser state half updated, which cannot be saved, so an interrupt that lands
    in a step (where a training run spends its time) used to lose everything since the last
    periodic checkpoint. ``check()`` raises the held KeyboardInterrupt between steps, where the
    loop saves a checkpoint. A second Ctrl-C stops at once. Only in the main thread, and only
    where SIGINT has Python's default handler (not when ignored or handled by the caller)."""

    def __init__(self, *, enabled: bool) -> None:
        import signal
        import threading

        self.requested = False
        self._previous: Any = None
        if (
            enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            self.release()
            raise KeyboardInterrupt

    def release(self) -> None:
        if self._previous is not None:
            import signal

            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def check_out_dir(out: Path) -> None:
    """``out`` must be new, empty, or an earlier run's output: a data set or a model directory
    given as ``--out`` by mistake would get a model and logs written into it."""
    from xmr.index.atomic import check_output_dir

    check_output_dir(out)
    if not out.is_dir() or (out / CONFIG_FILE).exists() or ckpt.last_checkpoint(out).exists():
        return
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise XmrError(
            f"{out}: exists and holds other files ({shown}), not an earlier training run; "
            "name a new or empty directory"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
