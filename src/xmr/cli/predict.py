"""``xmr predict``: a model's top-K for every query of a split, written as a submission file
(:func:`xmr.workflows.predict.predict`)."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options
from xmr.cli.data import add_skip_bad_argument
from xmr.cli.evaluate import add_model_arguments, model_kwargs, print_warnings
from xmr.cli.rerank_options import add_rerank_arguments
from xmr.cli.text_options import add_text_arguments
from xmr.eval.submission import SUBMISSION_FORMATS
from xmr.workflows.predict import predict


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="write a submission file (Track2 JSON, MUGE / Chinese-CLIP JSON lines, TREC run)",
        description=(
            "Encode a split with a model, rank every item for every query exactly (optionally "
            "reranking the top K with a cross-encoder) and write the top-K ids as a submission "
            "file. The file is checked against the split as the official scorers check it "
            "before xmr reports success, and it is replaced atomically."
        ),
    )
    add_predict_arguments(p)
    p.set_defaults(func=run)


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``xmr predict``."""
    p.add_argument(
        "--model",
        required=True,
        metavar="M",
        help="model spec (hf:DIR, open_clip:..., st:DIR, or bm25[:k1=..,b=..,tokenizer=..])",
    )
    p.add_argument("--data", required=True, metavar="PATH", help="data set directory or file")
    options.add_data_format(p)
    options.add_split(p, "split to predict (default: test, else the only one)")
    options.add_out(p, "the submission file to write", metavar="FILE")
    options.add_out_format(
        p,
        "format of the --out file (default: track2 for track2 data, cnclip for Chinese-CLIP-named "
        "MUGE files, trec for text corpora (beir), else muge)",
        choices=SUBMISSION_FORMATS,
        old="--submission-format",
    )
    options.add_k(p, "ids per query, as the scorers expect")
    options.add_json(p, "print a JSON summary")
    p.add_argument(
        "--fused",
        default=None,
        metavar="W|DIR|blip2",
        help="rank items by their fused image+caption vector: normalize(W*image + (1-W)*caption) "
        "or a learned fusion directory (xmr train --fused); blip2: BLIP-2's multimodal items "
        "(the Q-Former over image and first caption, as `xmr evaluate --fused blip2`)",
    )
    add_model_arguments(p, evaluate=False)
    add_rerank_arguments(p)
    add_text_arguments(p)
    add_skip_bad_argument(p)


def run(args: argparse.Namespace) -> int:
    result = predict(
        args.model,
        args.data,
        args.out,
        out_format=args.out_format,
        fused=args.fused,
        **model_kwargs(args),
    )
    print_warnings(result.warnings)
    if args.json:
        print(json.dumps(result.summary(), ensure_ascii=False))
    else:
        print(
            f"wrote {result.out_format} predictions for {result.queries} queries of split "
            f"'{result.split}' to {result.path}"
        )
    return 0
