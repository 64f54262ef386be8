"""``xmr train``: contrastive fine-tuning (the library's ``xmr.train.train``)."""

from __future__ import annotations

import argparse
import json
import os

from xmr.cli import options
from xmr.errors import XmrError
from xmr.train.config import load_config
from xmr.train.config_base import parse_overrides

EPILOG = """\
options as key=value (after the flags; any TrainConfig field, see `xmr.train.TrainConfig`):
  epochs=10 batch_size=64 accum_steps=1 accum_mode=features|gradients
  lr=5e-4 image_lr=... text_lr=... weight_decay=0.1 warmup_ratio=0.05 min_lr_ratio=0
  grad_clip=1.0 loss=clip|siglip multi_positive=soft|mask|none max_logit_scale=100
  label_smoothing=0 (clip loss; LAVIS trains BLIP-2's ITC with 0.1)
  freeze_image=true | freeze_text=true (one tower) freeze_image_layers=N freeze_text_layers=N
  grad_checkpointing=true precision=fp32|fp16|bf16 device=auto workers=2 seed=0
  eval_every=0 (0: every epoch) best_metric=t2i/mAP@10 save_every=0 resume=true
  text_source=auto|pairs|captions|both (captions: one of an image's captions per step)
  draft=true (= --draft: JPEG draft decoding for training and validation)

multi-GPU / multi-process: torchrun --nproc_per_node N -m xmr train ...
  (NCCL on GPUs, gloo on CPU; features are gathered so the contrastive batch is global)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model contrastively on a data set",
        description=(
            "Fine-tune a CLIP-family model with a contrastive loss (CLIP's InfoNCE or SigLIP's "
            "sigmoid loss; items of one relevance group are not negatives), validate on a "
            "split, and write OUT: the best model (loadable as hf:OUT), the resolved config, "
            "logs and metrics. Re-running the same command resumes an interrupted run."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model spec to start from (hf:DIR, a hub id, open_clip:...)")
    p.add_argument("--data", metavar="PATH", help="data set directory or file")
    p.add_argument("--out", metavar="DIR", help="output directory (the trained model)")
    p.add_argument("--format", default=None, help="data set format (default: detected)")
    p.add_argument(
        "--images", default=None, metavar="DIR", help="image folder, for formats that need one"
    )
    p.add_argument("--split", default=None, help="training split (default: train)")
    p.add_argument(
        "--valid-split",
        default=None,
        help="validation split; 'none' disables validation (default: valid)",
    )
    p.add_argument("--config", default=None, metavar="FILE", help="YAML (or JSON) training config")
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: --config's, else 10)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="per process and micro-batch (default: --config's, else 64)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="base learning rate (default: --config's, else 5e-4)"
    )
    # None, not "auto": a flag that is not given must not override --config's device.
    p.add_argument(
        "--device",
        default=None,
        metavar="D",
        help="where training runs: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ... "
        "(default: --config's, else auto)",
    )
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "fp16", "bf16"],
        help="autocast precision (default: --config's, else fp32)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image decoding processes (default: --config's, else 2)",
    )
    options.add_draft(p)
    options.add_image_backend(p)
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if OUT has a checkpoint"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any TrainConfig field")
    from xmr.cli.data import add_skip_bad_argument

    add_skip_bad_argument(p)
    from xmr.cli.train_itm import add_itm_arguments

    add_itm_arguments(p)
    from xmr.cli.train_fusion import add_fusion_train_arguments

    add_fusion_train_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.draft and (args.fused or args.cross_encoder):
        which = "--fused" if args.fused else "--cross-encoder"
        raise XmrError(f"--draft is for contrastive training; {which} training decodes in full")
    if args.image_backend and (args.fused or args.cross_encoder):
        which = "--fused" if args.fused else "--cross-encoder"
        raise XmrError(f"--image-backend is for contrastive training, not {which} training")
    if args.fused:
        from xmr.cli.train_fusion import run_fusion

        return run_fusion(args)
    if args.cross_encoder:
        from xmr.cli.train_itm import run_itm

        return run_itm(args)
    from xmr.train.loop import train

    valid = args.valid_split
    fields = {
        "model": args.model,
        "data": args.data,
        "out": args.out,
        "format": args.format,
        "images": args.images,
        "split": args.split,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "precision": args.precision,
        "workers": args.workers,
        "skip_bad": True if args.skip_bad else None,
        # Not given: --config's setting (or off); the flag only turns it on.
        "draft": True if args.draft else None,
        "image_backend": args.image_backend,
    }
    overrides = parse_overrides(args.overrides)
    if valid is not None:
        overrides.setdefault("valid_split", None if valid.lower() in ("none", "") else valid)
    if args.no_resume:
        overrides["resume"] = False
    if args.quiet or args.json:
        overrides.setdefault("progress", False)
    config = load_config(args.config, overrides, **fields)
    from xmr.cli.report import training_report_hook

    report_hook = training_report_hook()  # OUT/report.html at every validation
    result = train(config, on_validation=report_hook)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    if report_hook is not None:
        report_hook(result.out_dir)  # once more with the finished run's metrics.json
    if args.json:
        print(json.dumps(result.summary, indent=2))
    elif not args.quiet:
        if result.best_metric:
            print(f"best {result.best_metric} = {result.best_value:.4f} at step {result.best_step}")
        print(f"model in {result.out_dir} (use it as --model hf:{result.out_dir})")
    return 0
