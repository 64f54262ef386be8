"""``xmr train --fused``: learn how to fuse item images and captions (not a command of its own:
``xmr train`` hands over here)."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options

_BARE = "bare"  # --fused without a value (the former flag)

FUSION_FIELDS = (
    "content, init_weight, epochs, batch_size,\n"
    "lr, weight_decay, negatives, temperature, metric, seed"
)


def add_fusion_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "learned fusion of items with captions",
        "With --fused, xmr train keeps --model frozen and learns a gate that fuses each item's\n"
        "image and caption embeddings, normalize(g * image + (1 - g) * caption), from the\n"
        "queries of --split, keeping the epoch that scores best on --valid-split. OUT then\n"
        "holds fusion.json and fusion.safetensors, for `xmr index build --fused OUT` and\n"
        f"`xmr evaluate --fused OUT`. KEY=VALUE: {FUSION_FIELDS}.",
    )
    g.add_argument(
        "--fused",
        nargs="?",
        const=_BARE,
        default=None,
        metavar="W",
        help="train a fusion of item image and caption embeddings instead of the model, starting "
        "from normalize(W * image + (1 - W) * caption) (W: init_weight, 0.5 by default)",
    )
    options.after_parse(p, _bare_fused)


def _bare_fused(p: argparse.ArgumentParser, ns: argparse.Namespace, extras: list) -> list:
    """``--fused`` was a flag: without a value it still works, with a warning; a KEY=VALUE it
    swallowed goes back to the overrides."""
    if ns.fused is not None and "=" in ns.fused:
        ns.overrides = [ns.fused, *(ns.overrides or [])]
        ns.fused = _BARE
    if ns.fused == _BARE:
        options.warn_deprecated(ns, "--fused without a value", "--fused W (e.g. --fused 0.5)")
    return extras


def run_fusion(args: argparse.Namespace) -> int:
    from xmr.errors import XmrError
    from xmr.train.config_base import parse_overrides
    from xmr.train.fusion import FusionTrainConfig, train_fusion_on_dataset

    if not args.model or not args.data or not args.out:
        raise XmrError("xmr train --fused needs --model, --data and --out")
    if args.cross_encoder:
        raise XmrError("--fused and --cross-encoder train different things; give one of them")
    values = parse_overrides(args.overrides)
    for key in ("batch_size", "lr", "epochs"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.fused != _BARE:
        try:
            values.setdefault("init_weight", float(args.fused))
        except ValueError:
            raise XmrError(
                f"--fused takes the weight W in [0, 1] the training starts from, not {args.fused!r}"
            ) from None
    quiet = args.quiet or args.json
    result = train_fusion_on_dataset(
        args.model,
        args.data,
        args.out,
        format=args.format,
        images=args.images,
        split=args.split,
        valid_split=args.valid_split or "auto",
        config=FusionTrainConfig.from_dict(values),
        device=args.device,
        precision=args.precision or "fp32",
        log=None if quiet else print,
        skip_bad=getattr(args, "skip_bad", False),
    )
    if args.json:
        print(json.dumps(result.summary, indent=2))
    elif not args.quiet:
        selected_on, metric = result.details["selected_on"], result.best_metric
        init_weight = result.model.training["config"]["init_weight"]
        print(
            f"{selected_on} {metric}: gated {result.best_value:.4f} (epoch "
            f"{result.details['best_epoch']}) vs weighted w={init_weight:g} {result.baseline:.4f}"
        )
        out = result.out_dir
        print(f"fusion in {out} (use it as `xmr index build EMB_DIR --out INDEX --fused {out}`)")
    return 0
