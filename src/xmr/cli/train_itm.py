"""``xmr train --cross-encoder SPEC``: ITM fine-tuning of a cross-encoder (not a command of its
own: ``xmr train`` hands over here)."""

from __future__ import annotations

import argparse
import json

ITM_FIELDS = (
    "steps, epochs, batch_size, lr, weight_decay, warmup_steps, grad_clip, hard_negatives, "
    "seed, log_every"
)


def add_itm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "cross-encoder (ITM) training",
        f"With --cross-encoder, xmr train fine-tunes that cross-encoder with the ITM loss on the "
        f"pairs of --split; --model, when given, is the first stage whose top non-matching "
        f"results are the hard negatives (else they are random). KEY=VALUE: {ITM_FIELDS}; "
        "--rerank-k sets how deep the validation reranks.",
    )
    g.add_argument(
        "--cross-encoder",
        default=None,
        metavar="SPEC",
        help="train this cross-encoder (blip:HUB_ID, blip2:HUB_ID, mplug:DIR, a local dir) instead",
    )
    g.add_argument("--rerank-k", type=int, default=16, help="validation reranking depth")


def run_itm(args: argparse.Namespace) -> int:
    from xmr.errors import XmrError
    from xmr.train.config_base import parse_overrides
    from xmr.train.itm import ItmTrainConfig, train_itm_on_dataset

    if not args.data or not args.out:
        raise XmrError("xmr train --cross-encoder needs --data and --out")
    # Options of contrastive training that ITM training has no use for: refuse, don't ignore.
    for name, flag in (
        ("config", "--config"),
        ("workers", "--workers"),
        ("no_resume", "--no-resume"),
    ):
        if getattr(args, name, None):
            raise XmrError(f"{flag} does not apply to xmr train --cross-encoder (use key=value)")
    values = parse_overrides(args.overrides)
    for key in ("batch_size", "lr", "epochs"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    quiet = args.quiet or args.json
    result = train_itm_on_dataset(
        args.cross_encoder,
        args.data,
        args.out,
        first_stage=args.model,
        format=args.format,
        images=args.images,
        split=args.split,
        valid_split=args.valid_split or "auto",
        rerank_k=args.rerank_k,
        config=ItmTrainConfig.from_dict(values),
        device=args.device,
        precision=args.precision or "fp32",
        log=None if quiet else print,
        skip_bad=getattr(args, "skip_bad", False),
    )
    if args.json:
        print(json.dumps(result.summary, indent=2))
    elif not args.quiet:
        for key, value in result.summary.get("valid", {}).items():
            print(f"valid {key} = {value:.4f}")
        print(f"cross-encoder in {args.out} (use it as --rerank {args.out})")
    return 0
