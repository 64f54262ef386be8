"""The contrastive training loop: ``train(TrainConfig)`` is ``xmr train``.

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

Set-up is ``xmr.train.setup``, the step ``xmr.train.contrastive_step``, the batches
``xmr.train.feed``; this module runs the steps, logs, validates and saves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.train import checkpoint as ckpt
from xmr.train.config import TrainConfig
from xmr.train.distributed import barrier, cleanup_distributed, init_distributed
from xmr.train.feed import TrainFeed
from xmr.train.interrupt import InterruptAtStepEnd
from xmr.train.logs import TensorBoard
from xmr.train.outputs import SUMMARY_FILE, check_out_dir, export_model, write_summary
from xmr.train.result import TrainResult
from xmr.train.setup import Session, build_session
from xmr.train.validate import Evaluator

__all__ = ["SUMMARY_FILE", "TrainResult", "check_out_dir", "export_model", "train"]


def train(
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    stop_after_steps: int | None = None,
    evaluator: Evaluator | None = None,
    on_validation: Callable[[Path], None] | None = None,
    **fields: Any,
) -> TrainResult:
    """Fine-tune a two-tower model contrastively (see ``TrainConfig`` for every option).

    Args:
        config: a ``TrainConfig`` (or a dict of its fields); ``fields`` override it.
        stop_after_steps: stop (with a checkpoint) after this many optimiser steps of this run,
            as if interrupted; running again resumes.
        evaluator: validates the encoder and picks the best model by its ``primary_metric``
            (default: a ``RetrievalEvaluator`` of ``valid_split`` by ``best_metric``). Under
            torchrun only rank 0 calls it.
        on_validation: called with ``OUT`` after each validation's row is logged (rank 0
            only); ``xmr train`` rebuilds ``OUT/report.html`` with it.

    Returns:
        A ``TrainResult`` (``trainer="contrastive"``, ``model`` the encoder). Under ``torchrun``
        every rank returns one; rank 0's is the one that wrote the files.
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
        say = _say if (info.is_main and config.progress) else (lambda _m: None)
        session = build_session(config, info, say, evaluator)
        tb = TensorBoard(session.out / "tensorboard", config.tensorboard and info.is_main)
        try:
            return _Loop(session, tb, stop_after_steps, on_validation).run()
        finally:
            tb.close()
    finally:
        cleanup_distributed(info)


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


class _Loop:
    def __init__(
        self,
        s: Session,
        tb: TensorBoard,
        stop_after: int | None,
        on_validation: Callable[[Path], None] | None = None,
    ) -> None:
        self.s = s
        self.tb = tb
        self.stop_after = stop_after
        self.on_validation = on_validation
        self.losses: list[float] = []

    def run(self) -> TrainResult:
        from tqdm import tqdm

        s = self.s
        cfg, plan, progress = s.cfg, s.plan, s.progress
        start = (progress["epoch"], progress["step"])
        feed = TrainFeed(
            s.examples,
            s.encoder,
            plan,
            s.info,
            cache=s.cache,
            start=start,
            epochs=cfg.epochs,
            workers=cfg.workers,
            seed=cfg.seed,
            multimodal=cfg.multimodal_items,
        )
        bar = tqdm(
            total=s.total_steps,
            initial=progress["global_step"],
            unit="step",
            disable=not (s.main and cfg.progress),
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
        hold = InterruptAtStepEnd(enabled=not s.info.enabled)
        try:
            for epoch, step in plan.positions(start[0], start[1], cfg.epochs):
                hold.check()  # a Ctrl-C during the last step stops here, where it can be saved
                micro = feed.step_batches(epoch, step)
                in_update = True
                loss = s.step(micro)
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
                done = g == s.total_steps
                stop = self.stop_after is not None and steps_this_run >= self.stop_after
                if g % cfg.log_every == 0 or done or stop or epoch_end:
                    last_loss = float(np.mean(window_loss))
                    progress["last_loss"] = last_loss
                    self.losses.append(last_loss)
                    self._log_step(g, last_loss, sps, prior_elapsed + now - run_start)
                    window_loss, window_samples, window_start = [], 0, now
                validate = s.validating and (
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
                    self._save(export=not s.validating)
                if stop and not done:
                    interrupted = True
                    break
        except KeyboardInterrupt:
            # Under torchrun the other ranks are not at the same point (a collective would
            # hang): the last periodic checkpoint stands. One process saves where it stopped.
            hold.release()
            if not in_update and not s.info.enabled:
                s.step.clear_gradients()
                self._save(export=False)
                if s.main:
                    _say(f"\ninterrupted: checkpoint saved at step {progress['global_step']}")
            raise
        finally:
            hold.release()
            bar.close()
            feed.close()
        elapsed = max(time.perf_counter() - run_start, 1e-9)
        return self._finish(interrupted, last_loss, run_samples / elapsed, elapsed)

    def _log_step(self, step: int, loss: float, sps: float, elapsed: float) -> None:
        s = self.s
        if not s.main:
            return
        row: dict[str, Any] = {
            "step": step,
            "epoch": round(step / s.plan.steps_per_epoch, 4),
            "loss": loss,
        }
        for group in s.optimizer.param_groups:
            row[f"lr/{group['name']}"] = group["lr"]
        row["logit_scale"] = float(s.module.logit_scale.detach().exp())
        if s.module.logit_bias is not None:
            row["logit_bias"] = float(s.module.logit_bias.detach())
        row["samples_per_s"] = sps
        row["elapsed_s"] = round(elapsed, 3)
        s.train_log.write(row)
        self.tb.scalars({k: v for k, v in row.items() if k != "step"}, step, "train/")

    def _validate(self, step: int) -> None:
        s = self.s
        if s.main:
            evaluator, progress = s.evaluator, s.progress
            metrics = evaluator(s.encoder)
            value = evaluator.primary(metrics)
            s.module.train()
            improved = evaluator.is_better(value, progress["best_value"])
            if improved:
                progress["best_value"] = float(value)
                progress["best_step"] = step
                export_model(s.encoder, s.out)
            row = {"step": step, "epoch": round(step / s.plan.steps_per_epoch, 4), **metrics}
            s.metric_log.write(row)
            s.history.append(row)
            self.tb.scalars(metrics, step, "valid/")
            progress["last_metrics"] = metrics
            if self.on_validation is not None:
                self.on_validation(s.out)
            s.say(
                f"step {step}: {s.best_metric} {value:.4f}"
                + (" (best so far, saved)" if improved else f" (best {progress['best_value']:.4f})")
            )
        barrier()

    def _save(self, export: bool) -> None:
        s = self.s
        rngs = [ckpt.rng_state()]
        if s.info.enabled:
            gathered: list[Any] = [None] * s.info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if s.main:
            ckpt.save_checkpoint(
                s.out,
                module=s.module,
                optimizer=s.optimizer,
                scheduler=s.scheduler,
                scaler=s.step.scaler,
                progress=s.progress,
                config=s.cfg.to_dict(),
                rng=rngs,
            )
            if export:
                export_model(s.encoder, s.out)
        barrier()

    def _finish(
        self, interrupted: bool, last_loss: float | None, sps: float, seconds: float
    ) -> TrainResult:
        s = self.s
        progress = s.progress
        g = progress["global_step"]
        if s.main and not interrupted:
            if s.validating and progress["best_step"] != g:
                export_model(s.encoder, s.out / "last")
            if not s.validating:
                export_model(s.encoder, s.out)
        # A finished run resumed with validation newly turned on has validated nothing.
        best_metric = s.best_metric if progress["best_value"] is not None else None
        result = TrainResult(
            trainer="contrastive",
            out_dir=s.out,
            global_step=g,
            total_steps=s.total_steps,
            best_metric=best_metric,
            best_value=progress["best_value"],
            best_step=progress["best_step"],
            metrics=dict(progress["last_metrics"]),
            history=list(s.history),
            losses=list(self.losses),
            last_loss=last_loss,
            interrupted=interrupted,
            samples_per_s=sps,
            seconds=seconds,
            model=s.encoder,
        )
        result.summary = {
            "out": str(result.out_dir),
            "global_step": g,
            "total_steps": s.total_steps,
            "best_metric": result.best_metric,
            "best_value": result.best_value,
            "best_step": result.best_step,
            "last_loss": last_loss,
            "samples_per_s": round(sps, 2),
        }
        if s.main:
            write_summary(
                s.out,
                {
                    "global_step": g,
                    "total_steps": s.total_steps,
                    "finished": g >= s.total_steps,
                    "best_metric": result.best_metric,
                    "best_value": result.best_value,
                    "best_step": result.best_step,
                    "final_metrics": result.metrics,
                    "last_loss": last_loss,
                    "history": result.history,
                },
            )
            if not interrupted:
                where = "best" if s.validating else "final"
                s.say(f"done: {where} model in {s.out} (load it with hf:{s.out})")
        barrier()
        return result
