"""``xmr similarity --model M IMAGE TEXT [TEXT...]``: score one image against texts."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options
from xmr.cli.data import add_skip_bad_argument, report_skipped
from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.workflows.pipeline import pipeline


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "similarity",
        help="score an image against one or more texts (bi-encoder cosine, optional ITM)",
        description=(
            "Score one image against each TEXT: the bi-encoder's cosine similarity (what search "
            "ranks by) and, with --cross-encoder, the image-text matching probability. IMAGE is "
            "a file, an http(s) URL or, with --data, an item id; with --item every positional "
            "argument is a text. Results come in the order the texts were given."
        ),
    )
    add_similarity_arguments(p)
    p.set_defaults(func=run)


def add_similarity_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``xmr similarity``."""
    p.add_argument(
        "inputs", nargs="+", metavar="IMAGE TEXT", help="an image, then one or more texts"
    )
    p.add_argument(
        "--model", default=None, metavar="M",
        help="bi-encoder spec (hf:DIR, open_clip:..., a dir); may be left out with --cross-encoder",
    )  # fmt: skip
    p.add_argument(
        "--cross-encoder",
        default=None,
        metavar="SPEC",
        help=(
            "also report the match probability of this cross-encoder (blip:..., blip2:..., "
            "mplug:DIR, a dir); alone (no --model) it is the only score, as in ModelScope"
        ),
    )
    p.add_argument(
        "--data", default=None, metavar="PATH", help="data set whose item ids name images"
    )
    options.add_data_format(p)
    options.add_split(p, "split of --data to look items up in (default: all)")
    p.add_argument(
        "--item", default=None, metavar="ID", help="take the image from this item of --data"
    )
    options.add_json(p, 'print {"scores": [...]} as JSON')
    options.add_device(p)
    options.add_precision(p)
    options.add_batch_size(p, default=32, help="texts per forward pass")
    add_skip_bad_argument(p)


def run(args: argparse.Namespace) -> int:
    if args.model is None and args.cross_encoder is None:
        raise XmrError("give --model (a bi-encoder), --cross-encoder, or both")
    if args.item is not None and args.data is None:
        raise XmrError("--item needs --data (the data set the item comes from)")
    if args.item is not None:
        image, texts = args.item, args.inputs
    else:
        image, texts = args.inputs[0], args.inputs[1:]
    if not texts:
        raise XmrError("give at least one TEXT after the IMAGE")
    dataset = None
    if args.data is not None:
        dataset = load_dataset(args.data, args.format, args.split, skip_bad=args.skip_bad)
        report_skipped(dataset, args.data)
    scorer = pipeline(
        "image-text-retrieval",
        # A cross-encoder alone is the pipeline's model (ModelScope's form of the call).
        model=args.model if args.model is not None else args.cross_encoder,
        cross_encoder=args.cross_encoder if args.model is not None else None,
        dataset=dataset,
        split=args.split,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
    )
    if args.item is not None and str(args.item) not in (scorer.items or {}):
        raise XmrError(f"{args.data}: no item '{args.item}'")
    scores = scorer({"image": image, "text": list(texts)})
    if args.json:
        print(json.dumps({"scores": scores}, ensure_ascii=False))
        return 0
    columns = [c for c in ("similarity", "match_prob") if scores and c in scores[0]]
    print("  ".join(f"{c:>10}" for c in columns) + "  text")
    for row in scores:
        print("  ".join(f"{row[c]:10.4f}" for c in columns) + f"  {row['text']}")
    return 0
