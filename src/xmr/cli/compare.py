"""``xmr compare``: does the image, the caption, or both find the item? One table, one JSON."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="image vs caption (BM25 / text model) vs fused vs hybrid retrieval, same queries",
        description=(
            "Seed 003's and seed 001's question side by side on the same queries of one split: "
            "image retrieval with an image model, caption retrieval with BM25 and with a text "
            "model, fused image+caption vectors, and the image ranking fused with caption BM25 "
            "(hybrid). Every row is scored the same way: xmr's R@K / MeanRecall and MTEB's "
            "ndcg_at_10, mrr_at_10, recall_at_10, map_at_10."
        ),
    )
    p.add_argument("--data", required=True, metavar="PATH", help="a data set with item captions")
    options.add_data_format(p)
    options.add_split(p, "split to score (default: the only one with relevance)")
    p.add_argument("--image-model", default=None, metavar="M", help="image model (hf:, open_clip:)")
    p.add_argument(
        "--text-model",
        default=None,
        metavar="M",
        help="text model for the caption-dense row (st:DIR...) (default: the image model's "
        "text tower)",
    )
    p.add_argument("--bm25", default="bm25", metavar="SPEC", help="the BM25 spec")
    p.add_argument(
        "--fusion-weight", type=float, default=0.5, metavar="W", help="image weight of fused"
    )
    p.add_argument(
        "--hybrid",
        default="rrf",
        choices=["rrf", "weighted"],
        help="how the hybrid row fuses the image ranking with caption BM25",
    )
    options.add_k(p, "cut-off of the xmr metrics")
    options.add_batch_size(p)
    options.add_device(p)
    options.add_precision(p)
    options.add_json(p, "print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.workflows.text_eval import compare_retrievers, format_comparison

    result = compare_retrievers(
        args.data, image_model=args.image_model, text_model=args.text_model, bm25=args.bm25,
        fusion_weight=args.fusion_weight, hybrid=args.hybrid, split=args.split,
        format=args.format, k=args.k, device=args.device, precision=args.precision,
        batch_size=args.batch_size,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(format_comparison(result))
    return 0
