"""Setting up a contrastive run: the data, the model, the optimiser, the evaluator and, when
resuming, the exact state of the checkpoint; the resolved configuration written beside it.

:func:`build_session` returns a :class:`Session`, everything the loop (``xmr.train.loop``)
needs, built the same way on every rank (ranks differ only in who writes files and validates).
"""

from __future__ import annotations

import inspect
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.io.atomic import atomic_write
from xmr.models import create_encoder
from xmr.models.base import resolve_precision
from xmr.train import checkpoint as ckpt
from xmr.train.config import CONFIG_FILE, TrainConfig, trajectory_differences
from xmr.train.contrastive_step import ContrastiveStep
from xmr.train.data import BatchPlan, TrainExample, TrainImageDataset, training_examples
from xmr.train.distributed import DistInfo, barrier, broadcast_object
from xmr.train.feed import cache_images, to_device
from xmr.train.logs import MetricLog
from xmr.train.losses import create_loss
from xmr.train.model import (
    TwoTower,
    cosine_schedule,
    enable_grad_checkpointing,
    freeze,
    param_groups,
)
from xmr.train.outputs import check_out_dir
from xmr.train.validate import (
    Evaluator,
    RetrievalEvaluator,
    check_best_metric,
    default_best_metric,
)


@dataclass
class Session:
    """A contrastive run, set up (see :func:`build_session`)."""

    cfg: TrainConfig
    info: DistInfo
    out: Path
    say: Callable[[str], None]
    examples: list[TrainExample]
    cache: torch.Tensor | None
    encoder: Any
    module: TwoTower
    precision: str
    plan: BatchPlan
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: ContrastiveStep
    best_metric: str
    evaluator: Evaluator | None  # on rank 0; None elsewhere
    validating: bool  # every rank: whether validations (and their barriers) happen
    train_log: MetricLog
    metric_log: MetricLog
    progress: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.info.is_main

    @property
    def device(self) -> torch.device:
        return self.info.device


def build_session(
    cfg: TrainConfig,
    info: DistInfo,
    say: Callable[[str], None],
    evaluator: Evaluator | None = None,
) -> Session:
    """Set up the run ``cfg`` describes on this rank (resuming ``out/checkpoints/last.pt``)."""
    out = Path(cfg.out)
    if info.is_main:
        check_out_dir(out)
        out.mkdir(parents=True, exist_ok=True)
    state = _checkpoint_to_resume(cfg, info, out, say)
    seed_everything(cfg.seed + info.rank)

    dataset = load_dataset(
        cfg.data, cfg.format, split=cfg.split, images=cfg.images, skip_bad=cfg.skip_bad
    )
    if info.is_main and dataset.skipped_warning():
        say(f"warning: {dataset.skipped_warning(cfg.data)}")
    examples = training_examples(dataset.split(cfg.split), cfg.max_train_items, cfg.text_source)
    if evaluator is not None:
        best_metric = evaluator.primary_metric
    else:
        best_metric = cfg.best_metric or default_best_metric(dataset.format)
        evaluator = _retrieval_evaluator(cfg, info, best_metric, say)
        if info.is_main and evaluator is not None:
            # Before any training: a metric validation never reports used to fail at the end
            # of the first epoch, with nothing saved.
            check_best_metric(best_metric, evaluator.categories())
    # Every rank must agree on when validations (and their barriers) happen.
    validating = bool(broadcast_object(evaluator is not None if info.is_main else False))
    if not info.is_main:
        evaluator = None

    precision = resolve_precision(cfg.precision, info.device)
    # Validation encodes through this encoder's preprocessing: the same decoding as training.
    encoder = create_encoder(
        cfg.model, device=str(info.device), precision=precision, draft=cfg.draft,
        image_backend=cfg.image_backend,
    )  # fmt: skip
    if cfg.multimodal_items:
        _check_multimodal(encoder, examples, cfg)
    module = TwoTower(encoder, cfg)
    frozen = freeze(module, cfg)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(encoder.model)
    module.to(info.device)
    module.train()

    examples, cache = cache_images(
        examples,
        encoder,
        mode=cfg.cache_images,
        max_mb=cfg.cache_max_mb,
        workers=cfg.workers,
        say=say,
    )
    plan = BatchPlan(
        [len(e.texts) for e in examples],
        cfg.batch_size,
        info.world_size,
        cfg.accum_steps,
        cfg.seed,
    )
    total_steps = plan.steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = int(round(cfg.warmup_ratio * total_steps))

    groups, group_infos = param_groups(module, cfg)
    if not groups:
        raise XmrError("nothing to train: every parameter is frozen")
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total_steps, warmup, cfg.min_lr_ratio)
    )
    scaler = None
    if precision == "fp16" and info.device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")

    progress = {
        "epoch": 0,
        "step": 0,
        "global_step": 0,
        "best_value": None,
        "best_step": None,
        "last_metrics": {},
        "elapsed_s": 0.0,
        "samples": 0,
        "global_batch": plan.step_size,
        "train_examples": len(examples),
    }
    if state is not None:
        _check_same_run(state["progress"], progress, out)
        progress.update(
            ckpt.restore(
                state,
                module=module,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                rank=info.rank,
            )
        )
        say(
            f"resuming from {ckpt.last_checkpoint(out)} at step "
            f"{progress['global_step']}/{total_steps}"
        )
    train_log, metric_log = MetricLog(out, "train_log"), MetricLog(out, "metrics")
    history: list[dict[str, Any]] = []
    if info.is_main:
        if state is not None:
            train_log.truncate_after(progress["global_step"])
            history = metric_log.truncate_after(progress["global_step"])
        else:
            train_log.reset()
            metric_log.reset()
        derived = {
            "world_size": info.world_size,
            "global_batch": plan.step_size,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": total_steps,
            "warmup_steps": warmup,
            "train_examples": len(examples),
            "dataset_format": dataset.format,
            **dataset.skip_record(),
            "precision": precision,
            "jpeg_draft": bool(cfg.draft),
            "param_groups": {g.name: g.n_params for g in group_infos},
            "frozen_params": frozen,
        }
        resolved = cfg.replace(best_metric=best_metric, extra={**cfg.extra, "derived": derived})
        text = resolved.to_json()
        atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    say(
        f"training {cfg.model} on {len(examples)} examples: {cfg.epochs} epoch(s) x "
        f"{plan.steps_per_epoch} steps, global batch {plan.step_size}"
        f" ({info.world_size} process(es)), {precision}, loss {cfg.loss}/"
        f"{cfg.multi_positive}"
        + (f", label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "")
        + (f", best by {best_metric}" if validating else "")
    )

    ddp = None
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        _freeze_unused(module, encoder, examples, params, info.device, say)
        # The buffers (position ids) are constants: no need to sync them every forward.
        ddp_params = inspect.signature(DistributedDataParallel).parameters
        no_sync = (
            "forward_sync_buffers" if "forward_sync_buffers" in ddp_params else "broadcast_buffers"
        )
        ddp = DistributedDataParallel(
            module,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            **{no_sync: False},
        )
    step = ContrastiveStep(
        module,
        create_loss(cfg.loss, cfg.multi_positive, cfg.label_smoothing),
        optimizer,
        scheduler,
        scaler,
        params,
        info,
        precision=precision,
        accum_mode=cfg.accum_mode,
        grad_clip=cfg.grad_clip,
        max_logit_scale=cfg.max_logit_scale,
        ddp=ddp,
    )
    return Session(
        cfg=cfg,
        info=info,
        out=out,
        say=say,
        examples=examples,
        cache=cache,
        encoder=encoder,
        module=module,
        precision=precision,
        plan=plan,
        total_steps=total_steps,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        best_metric=best_metric,
        evaluator=evaluator,
        validating=validating,
        train_log=train_log,
        metric_log=metric_log,
        progress=progress,
        history=history,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _checkpoint_to_resume(
    cfg: TrainConfig, info: DistInfo, out: Path, say: Callable[[str], None]
) -> dict[str, Any] | None:
    path = ckpt.last_checkpoint(out)
    if info.is_main and path.exists() and not path.is_file():
        raise XmrError(f"{path}: is not a file; the checkpoint could never be saved there")
    # Rank 0 decides: another rank looking after rank 0 removed the file would disagree.
    if not broadcast_object(path.is_file()):
        return None
    if not cfg.resume:
        say(f"{path} exists; resume=false: starting over")
        if info.is_main:
            path.unlink()
            shutil.rmtree(out / "last", ignore_errors=True)
        barrier()
        return None
    state = ckpt.load_checkpoint(path)
    saved = TrainConfig.from_dict(state["config"], where=str(path))
    diffs = trajectory_differences(saved, cfg)
    if diffs:
        raise XmrError(
            f"{out}: holds a checkpoint trained with other settings ({'; '.join(diffs)}); "
            "use another output directory, or resume=false to start over"
        )
    return state


def _check_same_run(saved: dict[str, Any], progress: dict[str, Any], out: Path) -> None:
    for key in ("global_batch", "train_examples"):
        if key in saved and saved[key] != progress[key]:
            raise XmrError(
                f"{out}: the checkpoint was trained with {key.replace('_', ' ')} "
                f"{saved[key]}, this run has {progress[key]} (same data, batch size "
                "and number of processes are needed to resume; resume=false starts over)"
            )


def _retrieval_evaluator(
    cfg: TrainConfig, info: DistInfo, best_metric: str, say: Callable[[str], None]
) -> RetrievalEvaluator | None:
    """Rank 0's evaluator of ``valid_split`` (None without one: a missing split is a warning)."""
    if not (cfg.valid_split and info.is_main):
        return None
    try:
        split = load_dataset(
            cfg.data, cfg.format, split=cfg.valid_split, images=cfg.images, skip_bad=cfg.skip_bad
        ).split(cfg.valid_split)
        return RetrievalEvaluator(
            split,
            multimodal=cfg.multimodal_items,
            primary_metric=best_metric,
            batch_size=cfg.eval_batch_size,
            workers=cfg.workers,
            cache_max_mb=cfg.cache_max_mb,
        )
    except XmrError as exc:
        say(f"warning: no validation ({exc})")
        return None


def _check_multimodal(encoder: Any, examples: list[TrainExample], cfg: TrainConfig) -> None:
    """multimodal_items needs a model with a multimodal item embedding and captions on every
    training item."""
    if not callable(getattr(encoder, "item_features", None)):
        raise XmrError(
            f"multimodal_items=true: {cfg.model} has no multimodal item embedding (a BLIP-2 model "
            "has: hf:<Blip2ForImageTextRetrieval dir or hub id>)"
        )
    bare = [e.item_id for e in examples if not e.captions]
    if bare:
        raise XmrError(
            f"multimodal_items=true: {len(bare)} training item(s) have no caption "
            f"(first: {bare[0]}); every item needs one to be trained as image + caption"
        )


def _freeze_unused(module, encoder, examples, params, device, say) -> None:
    """Parameters no feature depends on (e.g. a BERT pooler the CLIP head skips) would make
    DDP wait forever for their gradients: find them with one probe backward and freeze them."""
    examples = examples[:2]
    dataset = TrainImageDataset([e.image for e in examples], encoder.preprocess)
    pixels = [dataset[i][1] for i in range(len(examples))]
    if any(p is None for p in pixels):
        return
    from torch.utils.data import default_collate

    batch = to_device(default_collate(pixels), device)
    tokens = to_device(encoder.tokenize([e.texts[0] for e in examples]), device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        image, text, scale, bias = module(batch, tokens)
        total = image.sum() + text.sum() + scale.sum() + (bias.sum() if bias is not None else 0)
        total.backward()
    unused = [p for p in params if p.grad is None]
    for p in params:
        p.grad = None
    for p in unused:
        p.requires_grad_(False)
    if unused:
        say(f"{len(unused)} parameter tensor(s) unused by the features are frozen")
