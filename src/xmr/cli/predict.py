"""``xmr predict``: a model's top-K for every query of a split, written as a submission file."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from xmr.eval.submission import SUBMISSION_FORMATS

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
    p.add_argument(
        "--model",
        required=True,
        metavar="M",
        help="model spec (hf:DIR, open_clip:..., st:DIR, or bm25[:k1=..,b=..,tokenizer=..])",
    )
    p.add_argument("--data", required=True, metavar="PATH", help="data set directory or file")
    p.add_argument(
        "--format", default=None, metavar="F", help="data set format (default: detected)"
    )
    p.add_argument("--split", default=None, help="split to predict [test, else the only one]")
    p.add_argument("--out", required=True, metavar="FILE", help="the submission file to write")
    p.add_argument(
        "--submission-format",
        default=None,
        choices=SUBMISSION_FORMATS,
        help="file format [track2 for track2 data, cnclip for Chinese-CLIP-named MUGE files, "
        "trec for text corpora (beir), else muge]",
    )
    p.add_argument("--k", type=int, default=10, help="ids per query [10, as the scorers expect]")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument(
        "--fused",
        default=None,
        metavar="W|DIR",
        help="rank items by their fused image+caption vector: normalize(W*image + (1-W)*caption) "
        "or a learned fusion directory (xmr train --fused)",
    )
    from xmr.cli.evaluate import add_model_arguments
    from xmr.cli.rerank_options import add_rerank_arguments

    add_model_arguments(p, directions=False)
    add_rerank_arguments(p)
    from xmr.cli.text_options import add_text_arguments

    add_text_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.cli.evaluate import embed_for_cli
    from xmr.data.readers import load_dataset
    from xmr.errors import XmrError
    from xmr.eval.embedded import rank_embedded
    from xmr.eval.submission import default_submission_format, write_submission
    from xmr.io.atomic import check_output_file

    if args.k < 1:
        raise XmrError(f"--k must be at least 1 (got {args.k})")
    check_output_file(args.out)  # before the work, not after it
    dataset = load_dataset(args.data, args.format, args.split)
    name = args.split
    if name is None and "test" in dataset.splits:
        name = "test"
    split = dataset.split(name)
    from xmr.workflows.text_eval import is_text_job

    if is_text_job(args.model, split, args.hybrid):  # text retrieval (cli/text_options)
        return _predict_text(args, dataset, split)
    kind = args.submission_format or default_submission_format(dataset, split)
    if args.fused is not None:
        from xmr.eval.embedded import embed_split_fused
        from xmr.models import create_encoder

        encoder = create_encoder(args.model, device=args.device, precision=args.precision)
        emb = embed_split_fused(encoder, split, args.fused, batch_size=args.batch_size)
    else:
        _, emb = embed_for_cli(args, dataset, split)
    depth = max(args.k, args.rerank_k) if args.rerank else args.k
    ranked = rank_embedded(emb, min(depth, len(split.items)), device=args.device)
    if args.rerank:
        ranked = _reranked(args, split, ranked)
    path = write_submission(
        args.out,
        ranked,
        split,
        kind=kind,
        k=args.k,
        on_warning=lambda message: print(f"xmr: warning: {message}", file=sys.stderr),
    )
    summary = {
        "out": str(path),
        "submission_format": kind,
        "split": split.name,
        "queries": len(ranked),
        "k": args.k,
        "failed_items": len(emb.failed),
        "reranked": bool(args.rerank),
        "fused": args.fused,
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(
            f"wrote {kind} predictions for {len(ranked)} queries of split '{split.name}' to {path}"
        )
    return 0


def _reranked(args: argparse.Namespace, split, ranked: dict) -> dict:
    from xmr.cli.rerank_options import load_cross_encoder, rerank_options
    from xmr.rerank import dataset_lookup, rerank_many

    qids = list(ranked)
    rows = rerank_many(
        [split.queries[q].text for q in qids],
        [[{"id": i, "score": s} for i, s in ranked[q]] for q in qids],
        load_cross_encoder(args),
        lookup=dataset_lookup(split, side="image"),
        k=args.rerank_k,
        **rerank_options(args),
    )
    return {q: [(r["id"], r["score"]) for r in row] for q, row in zip(qids, rows, strict=True)}


def _predict_text(args: argparse.Namespace, dataset, split) -> int:
    """``--model bm25|st:...`` / ``--hybrid``: a text retrieval run (TREC unless asked)."""
    from xmr.cli.rerank_options import load_cross_encoder, rerank_options
    from xmr.cli.text_options import text_options
    from xmr.errors import XmrError
    from xmr.workflows.text_eval import predict_text

    if args.fused is not None:
        raise XmrError("--fused does not apply to text retrieval (--model bm25, st:..., --hybrid)")
    kind = args.submission_format or "trec"
    path = predict_text(
        args.model, dataset, args.out, split=split.name, submission_format=kind, k=args.k,
        device=args.device, precision=args.precision, batch_size=args.batch_size,
        rerank=load_cross_encoder(args) if args.rerank else None,
        rerank_options={"rerank_k": args.rerank_k, **rerank_options(args)},
        **text_options(args),
    )  # fmt: skip
    summary = {"out": str(path), "submission_format": kind, "split": split.name,
               "queries": len(split.queries), "k": args.k, "reranked": bool(args.rerank),
               "model": args.model, "hybrid": args.hybrid}  # fmt: skip
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(
            f"wrote {kind} predictions for {len(split.queries)} queries of split '{split.name}' to {path}"
        )
    return 0
