"""``xmr search INDEX_DIR "text"`` / ``--image FILE``: ranked results from an index."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options
from xmr.errors import XmrError
from xmr.search import Reranker, Searcher


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search an index by text or by image",
        description=(
            "Rank the items of INDEX_DIR for a text query (or --image FILE) with the model that "
            "built the index. Another model (--model) must be the same weights."
        ),
    )
    p.add_argument("index_dir", metavar="INDEX_DIR", help="an index directory (xmr index build)")
    p.add_argument("query", nargs="?", default=None, metavar="TEXT", help="the text query")
    p.add_argument("--image", default=None, metavar="FILE", help="query by this image instead")
    options.add_k(p, "results to show")
    p.add_argument("--category", default=None, metavar="C", help="only items of this category")
    p.add_argument(
        "--model", default=None, metavar="M", help="model spec (default: the one the index names)"
    )
    options.add_device(p)
    options.add_query_draft(p)
    options.add_runtime(p)
    p.add_argument("--json", action="store_true", help='print {"results": [...]} as JSON')
    from xmr.cli.rerank_options import add_rerank_arguments

    add_rerank_arguments(p)
    from xmr.cli.text_options import add_text_arguments

    add_text_arguments(p, search=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if (args.query is None) == (args.image is None):
        raise XmrError("give a query TEXT or --image FILE (one of them)")
    if args.query is not None and not args.query.strip():
        raise XmrError("the query text is empty")
    from xmr.cli.text_options import searcher_options

    mode = args.mode or ("hybrid" if args.hybrid else None)
    if mode is not None and args.image is not None:
        raise XmrError("--mode applies to text queries, not --image")
    reranker = None
    if args.rerank:
        from xmr.cli.rerank_options import load_cross_encoder, rerank_options

        options = rerank_options(args)
        reranker = Reranker(load_cross_encoder(args), k=args.rerank_k, **options)
    searcher = Searcher.from_index_dir(
        args.index_dir,
        device=args.device,
        model=args.model,
        reranker=reranker,
        draft=args.draft,
        runtime=args.runtime,
        **searcher_options(args),
    )
    if reranker is not None:
        query = args.query
        if args.image is not None:
            from xmr.models.base import load_image

            query = load_image(args.image)
        results = searcher.search_reranked(
            [query], args.k, category=args.category, mode=mode if args.image is None else None
        )[0]
    elif args.image is not None:
        results = searcher.search_image(args.image, args.k, category=args.category)
    else:
        results = searcher.search_text(args.query, args.k, category=args.category, mode=mode)
    if args.json:
        out = {"query": args.query, "image": args.image, "results": [r.to_dict() for r in results]}
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    for r in results:
        text = " | ".join(r.captions[:2]) or r.attribute or ""
        cat = f" [{r.category}]" if r.category else ""
        print(f"{r.rank:>3}  {r.score:.4f}  {r.id}{cat}  {r.image_source}")
        if text:
            print(f"     {text}")
        if r.attribute and r.captions:
            print(f"     attribute: {r.attribute}")
    if not results:
        print("no results")
    return 0
