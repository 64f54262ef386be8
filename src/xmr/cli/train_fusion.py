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
    from xmr.data.readers import load_dataset
    from xmr.errors import XmrError
    from xmr.io.atomic import check_output_dir
    from xmr.models import create_encoder
    from xmr.train.config import parse_overrides
    from xmr.train.fusion import FusionData, FusionTrainConfig, train_fusion

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
    if args.device not in (None, "auto"):
        values["device"] = args.device
    config = FusionTrainConfig.from_options(values)
    check_output_dir(args.out)  # before the encoding and training, not after them
    dataset = load_dataset(args.data, args.format, images=args.images)
    train_name = args.split or ("train" if "train" in dataset.splits else None)
    train_split = dataset.split(train_name, need_relevance=True)
    valid_name = args.valid_split or "valid"
    valid_split = None
    if valid_name.lower() != "none":
        if valid_name in dataset.splits and valid_name != train_split.name:
            valid_split = dataset.split(valid_name, need_relevance=True)
        elif args.valid_split:
            raise XmrError(
                f"{args.data}: no validation split '{valid_name}' (splits: "
                f"{', '.join(dataset.splits)}); pass --valid-split none to select on the "
                "training split"
            )
    device = None if args.device in (None, "auto") else args.device
    encoder = create_encoder(args.model, device=device, precision=args.precision or "fp32")
    quiet = args.quiet or args.json
    log = None if quiet else print
    if log:
        log(f"encoding split '{train_split.name}' with {args.model} (frozen)")
    train = FusionData.encode(encoder, train_split)
    valid = FusionData.encode(encoder, valid_split) if valid_split is not None else None
    result = train_fusion(train, config=config, valid=valid, model=encoder.manifest(), log=log)
    result.fusion.training.update(
        data={"path": str(args.data), "format": dataset.format},
        valid_split=valid_split.name if valid_split is not None else None,
    )
    out = result.fusion.save(args.out)
    judge = valid if valid is not None else train
    summary = {
        "out": str(out),
        "kind": result.fusion.kind,
        "content": result.fusion.content,
        "epochs": config.epochs,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "best_epoch": result.best_epoch,
        "selected_on": result.selected_on,
        f"weighted/{result.metric}": result.baseline,
        f"gated/{result.metric}": result.best,
        "image_share": result.fusion.image_share(judge.items.image, judge.items.caption),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(
            f"{result.selected_on} {result.metric}: gated {result.best:.4f} (epoch "
            f"{result.best_epoch}) vs weighted w={config.init_weight:g} {result.baseline:.4f}"
        )
        print(f"fusion in {out} (use it as `xmr index build EMB_DIR --out INDEX --fused {out}`)")
    return 0
