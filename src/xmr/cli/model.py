"""``xmr model tiny | info``: make a tiny offline model, describe a model."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options
from xmr.cli.data import add_skip_bad_argument, report_skipped
from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.models import create_encoder
from xmr.models.cross_encoders import create_cross_encoder
from xmr.models.mplug.tiny import create_tiny_mplug, tiny_mplug_summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="create a tiny offline model, describe a model")
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION")
    actions.required = True

    tiny = actions.add_parser(
        "tiny",
        help="write a small random CLIP (or mPLUG) in its real on-disk format (no download)",
        description=(
            "Write a small random CLIPModel with a tokenizer trained offline (on the data set's "
            "texts with --data, else on built-in English and traffic words) and its image "
            "processor config. Load it with --model hf:OUT (or transformers itself). "
            "With --family mplug: a small random mPLUG image-text retrieval model in "
            "ModelScope's layout (configuration.json, config.yaml, config_bert.json, vocab.txt, "
            "pytorch_model.bin); use it as --cross-encoder mplug:OUT or --rerank mplug:OUT. "
            "With --family blip / blip2: a small random BlipForImageTextRetrieval / "
            "Blip2ForImageTextRetrieval in transformers' layout (with tokenizer and processor): "
            "--model hf:OUT uses its ITC bi-encoder (BLIP-2: --query-tokens vectors per image, "
            "scored by max-sim), --rerank blip2:OUT its ITM head."
        ),
    )
    add_tiny_arguments(tiny)
    tiny.set_defaults(func=run_tiny)

    info = actions.add_parser(
        "info",
        help="print a model's manifest (spec, backend, dimension, preprocessing, fingerprint)",
    )
    info.add_argument("spec", metavar="SPEC", help="hf:<id or dir>, open_clip:<arch>[@w], a dir")
    options.add_device(info)
    options.add_json(info, "print the manifest as JSON (it always is; for scripts' uniformity)")
    info.set_defaults(func=run_info)


def add_tiny_arguments(tiny: argparse.ArgumentParser) -> None:
    """Every option of ``xmr model tiny``."""
    options.add_out(tiny, "output directory", legacy_positional=True)
    tiny.add_argument("--data", metavar="PATH", help="data set whose texts build the vocabulary")
    options.add_data_format(tiny)
    options.add_split(tiny, "only this split's texts (default: all)")
    tiny.add_argument(
        "--family",
        default="clip",
        choices=["clip", "mplug", "blip", "blip2"],
        help="what to write",
    )
    tiny.add_argument(
        "--query-tokens", type=int, default=4, metavar="K",
        help="blip2: query tokens, the vectors per image (published models: 32)",
    )  # fmt: skip
    tiny.add_argument(
        "--embed-dim", type=int, default=None, metavar="N",
        help="embedding dimension (default: 64; blip/blip2 16)",
    )  # fmt: skip
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    tiny.add_argument(
        "--image-size", type=int, default=None, metavar="PX",
        help="input size (default: 64; mplug 28, blip/blip2 32)",
    )  # fmt: skip
    options.add_json(tiny, "print the model's manifest as JSON")
    add_skip_bad_argument(tiny)


def run_tiny(args: argparse.Namespace) -> int:
    from xmr.models.tiny import create_tiny_clip, dataset_texts  # loads torch: not for --help

    blip = args.family in ("blip", "blip2")
    if args.image_size is None:
        args.image_size = {"mplug": 28, "blip": 32, "blip2": 32}.get(args.family, 64)
    if args.embed_dim is None:
        args.embed_dim = 16 if blip else 64
    for name in ("embed_dim", "image_size", "query_tokens"):
        if getattr(args, name) <= 0:
            raise XmrError(f"--{name.replace('_', '-')} must be positive")
    texts = None
    if args.data:
        dataset = load_dataset(args.data, args.format, args.split, skip_bad=args.skip_bad)
        report_skipped(dataset, args.data)
        texts = dataset_texts(dataset, args.split)
        if not texts:
            raise XmrError(f"{args.data}: the data set has no texts to build a vocabulary from")
    if args.family == "mplug":
        return _tiny_mplug(args, texts)
    if blip:
        return _tiny_blip(args, texts)
    out = create_tiny_clip(
        args.out, texts=texts, embed_dim=args.embed_dim, seed=args.seed, image_size=args.image_size
    )
    if args.json:
        print(json.dumps(create_encoder(f"hf:{out}", device="cpu").manifest(), indent=2))
    else:
        source = f"{len(texts)} texts of {args.data}" if texts else "the built-in vocabulary"
        print(f"wrote a tiny CLIP to {out} (tokenizer from {source}); use it as --model hf:{out}")
    return 0


def _tiny_mplug(args: argparse.Namespace, texts: list[str] | None) -> int:

    words = sorted({w for t in texts or () for w in t.lower().split()})
    out = create_tiny_mplug(
        args.out, words=words, embed_dim=args.embed_dim, seed=args.seed, image_res=args.image_size
    )
    if args.json:
        print(json.dumps(create_cross_encoder(f"mplug:{out}", device="cpu").describe(), indent=2))
    else:
        print(
            f"wrote a tiny mPLUG retrieval model to {out} ({tiny_mplug_summary(out)}); "
            f"use it as --cross-encoder mplug:{out}"
        )
    return 0


def _tiny_blip(args: argparse.Namespace, texts: list[str] | None) -> int:
    from xmr.models.tiny import create_tiny_blip  # loads torch: not for --help

    out = create_tiny_blip(
        args.out,
        args.family,
        texts=texts,
        embed_dim=args.embed_dim,
        seed=args.seed,
        image_size=args.image_size,
        num_query_tokens=args.query_tokens,
    )
    if args.json:
        print(json.dumps(create_encoder(f"hf:{out}", device="cpu").manifest(), indent=2))
    else:
        what = "BLIP" if args.family == "blip" else f"BLIP-2 ({args.query_tokens} query tokens)"
        print(
            f"wrote a tiny {what} retrieval model to {out}; use it as --model hf:{out} "
            f"(ITC bi-encoder) or --rerank {args.family}:{out} (ITM)"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    encoder = create_encoder(args.spec, device=args.device)
    print(json.dumps(encoder.manifest(), indent=2))
    return 0
