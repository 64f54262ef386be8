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
        help="train this cross-encoder (blip:HUB_ID, blip2:HUB_ID, a local dir) instead",
    )
    g.add_argument("--rerank-k", type=int, default=16, help="validation reranking depth [16]")


def run_itm(args: argparse.Namespace) -> int:
    from xmr.data.readers import load_dataset
    from xmr.errors import XmrError
    from xmr.models.cross_encoders import create_cross_encoder
    from xmr.models.itm_training import ItmTrainConfig, train_itm
    from xmr.train.config import parse_overrides

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
    config = ItmTrainConfig.from_options(values)
    device = None if args.device in (None, "auto") else args.device
    precision = args.precision or "fp32"
    dataset = load_dataset(args.data, args.format, images=args.images)
    split = dataset.split(args.split or ("train" if "train" in dataset.splits else None))
    ce = create_cross_encoder(args.cross_encoder, device=device, precision=precision)
    first_stage = None
    if args.model:
        from xmr.models import create_encoder

        first_stage = create_encoder(args.model, device=device, precision=precision)
    quiet = args.quiet or args.json
    result = train_itm(
        ce,
        split,
        config=config,
        first_stage=first_stage,
        out_dir=args.out,
        log=None if quiet else print,
    )
    summary = {
        "out": str(args.out),
        "steps": result["steps"],
        "negatives": result["negatives"],
        "last_loss": result["losses"][-1],
    }
    valid_name = args.valid_split or "valid"
    if first_stage is not None and valid_name.lower() != "none" and valid_name in dataset.splits:
        from xmr.eval.reranked import evaluate_reranked

        valid = dataset.split(valid_name)
        text_emb = first_stage.encode_texts([q.text for q in valid.queries.values()])
        image_emb = first_stage.encode_images([it.image for it in valid.items.values()])
        metrics = evaluate_reranked(valid, text_emb, image_emb, ce, rerank_k=args.rerank_k)
        summary["valid"] = {k: v for k, v in metrics.items() if k.endswith(("R@1", "MeanRecall"))}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        for key, value in summary.get("valid", {}).items():
            print(f"valid {key} = {value:.4f}")
        print(f"cross-encoder in {args.out} (use it as --rerank {args.out})")
    return 0
