"""``xmr index build|add|delete|info``: FAISS and Milvus indexes over embedding directories."""

from __future__ import annotations

import argparse
import json
import logging

from xmr.cli import options
from xmr.workflows.index_build import add_embeddings, add_texts, delete_items, index_embeddings

KINDS = ("images", "captions", "texts", "multimodal")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, extend and describe vector indexes")
    cmds = p.add_subparsers(dest="index_command", metavar="COMMAND")
    cmds.required = True

    b = cmds.add_parser(
        "build",
        help="build an index from `xmr encode` output",
        description=(
            "Build an index over the item embeddings of EMB_DIR and write it to INDEX_DIR "
            "(replaced atomically). --spec auto builds exact search (Flat) for small "
            "collections and an IVF index for large ones; an approximate index reports its "
            "recall@10 against exact search."
        ),
    )
    add_build_arguments(b)
    b.set_defaults(func=run_build)

    a = cmds.add_parser("add", help="append new embeddings to an index without a rebuild")
    add_add_arguments(a)
    a.set_defaults(func=run_add)

    d = cmds.add_parser(
        "delete",
        help="delete items by id from an index (FAISS or Milvus)",
        description="Delete items (vector, id and metadata) from INDEX_DIR, saved atomically. "
        "An unknown id is an error and nothing is deleted, unless --missing-ok.",
    )
    d.add_argument("index_dir", metavar="INDEX_DIR", help="the index to delete from")
    d.add_argument("ids", metavar="ID", nargs="+", help="item ids to delete")
    d.add_argument("--missing-ok", action="store_true", help="skip ids that are not in the index")
    options.add_json(d, "print the ids deleted and the index description as JSON")
    d.set_defaults(func=run_delete)

    i = cmds.add_parser("info", help="describe an index")
    i.add_argument("index_dir", metavar="INDEX_DIR", help="the index directory")
    options.add_json(i, "print the description as JSON")
    i.set_defaults(func=run_info)


def add_build_arguments(b: argparse.ArgumentParser) -> None:
    """Every option of ``xmr index build``."""
    b.add_argument(
        "emb_dir",
        metavar="EMB_DIR",
        nargs="?",
        default=None,
        help="embeddings directory (xmr encode --out); none with --model bm25",
    )
    options.add_out(b, "index directory (replaced atomically)", metavar="INDEX_DIR")
    # A lexical index is built from the data set's texts, not from embeddings.
    b.add_argument(
        "--model",
        default=None,
        metavar="bm25[:k1=..,b=..,method=..,tokenizer=..]",
        help="build a BM25 index over --data's item texts (captions; a BEIR corpus) instead of "
        "EMB_DIR; tokenizer auto|words|cjk-bigram|jieba (default: none, a vector index; "
        "tokenizer auto: from the corpus)",
    )
    b.add_argument(
        "--data", default=None, metavar="PATH", help="the data set for --model bm25 (default: none)"
    )
    options.add_data_format(b)
    options.add_split(b)
    b.add_argument(
        "--spec",
        default="auto",
        help="faiss: auto, Flat, HNSW32, IVF4096,Flat, IVF4096,PQ64 or any index_factory string; "
        "milvus: auto, FLAT, HNSW, IVF_FLAT, IVF_SQ8, ... with parameters as "
        "TYPE:key=value,... (e.g. HNSW:M=16,efConstruction=200)",
    )
    b.add_argument(
        "--backend",
        default="faiss",
        choices=("faiss", "milvus"),
        help="faiss: an index file in INDEX_DIR (default); milvus: a Milvus collection, in a "
        "milvus-lite database INDEX_DIR/milvus.db unless --uri",
    )
    b.add_argument(
        "--uri",
        default=None,
        metavar="URI",
        help="milvus: a server or cluster (http://host:19530; token from $XMR_MILVUS_TOKEN, "
        "never stored) instead of milvus-lite",
    )
    b.add_argument(
        "--collection",
        default=None,
        metavar="NAME",
        help="milvus: the collection (default: xmr_items on lite, xmr_<INDEX_DIR name> on a "
        "server); a build replaces it",
    )
    b.add_argument(
        "--kind",
        default=None,
        choices=KINDS,
        help="which vectors to index (default: images, else captions)",
    )
    b.add_argument(
        "--fused",
        default=None,
        metavar="W|DIR|blip2",
        help="index fused items from images and captions encoded together (xmr encode --kinds "
        "images,captions,texts): W = normalize(W * image + (1 - W) * caption), or DIR = a "
        "learned fusion written by `xmr train --fused`; blip2 = BLIP-2's multimodal items "
        "(xmr encode --kinds multimodal,captions,texts: the Q-Former over image and caption, K "
        "vectors, ranked by max-sim as `xmr evaluate --fused blip2` ranks them)",
    )
    b.add_argument(
        "--multi-vector",
        default="all",
        choices=("all", "mean"),
        help="items of K vectors each (BLIP-2 images): all = store every vector, ranked by "
        "max-sim (exact; K times the memory); mean = one vector per item, the normalised mean "
        "(K times smaller, lower recall: see README) (default: all)",
    )
    b.add_argument(
        "--exact-max",
        type=options.positive_int,
        default=None,
        metavar="N",
        help="auto: largest collection searched exactly (default: 50000)",
    )
    b.add_argument("--nprobe", type=options.positive_int, default=None, metavar="N",
                   help="IVF lists visited per query (default: 1/16 of the lists, 8-256)")  # fmt: skip
    b.add_argument("--ef-search", type=options.positive_int, default=None, metavar="N",
                   help="HNSW search depth (default: 128)")  # fmt: skip
    b.add_argument(
        "--train-size", type=options.positive_int, default=None, metavar="N",
        help="vectors sampled to train IVF/PQ (default: 40 per list, at least 65536)",
    )  # fmt: skip
    options.add_json(b, "print the index description as JSON")


def add_add_arguments(a: argparse.ArgumentParser) -> None:
    """Every option of ``xmr index add``."""
    a.add_argument("index_dir", metavar="INDEX_DIR", help="the index to extend (saved atomically)")
    a.add_argument(
        "emb_dir", metavar="EMB_DIR", nargs="?", default=None,
        help="embeddings of the same model, new ids (a vector index)",
    )  # fmt: skip
    a.add_argument(
        "--data", default=None, metavar="PATH",
        help="a BM25 index: add the items of this data set (their captions; every document is "
        "re-scored, as a rebuild over the larger corpus would)",
    )  # fmt: skip
    a.add_argument("--format", default=None, help="--data's data set format (default: detected)")
    a.add_argument("--split", default=None, help="--data's split (default: the only/test one)")
    a.add_argument(
        "--kind", default=None, choices=KINDS, help="which vectors (default: as the index's)"
    )
    a.add_argument(
        "--upsert",
        action="store_true",
        help="replace items whose id is already in the index (default: that is an error)",
    )
    options.add_json(a, "print the index description and the number added as JSON")


def run_build(args: argparse.Namespace) -> int:
    if args.model is not None or args.data is not None:
        return _run_build_bm25(args)
    if args.emb_dir is None:
        from xmr.errors import XmrError

        raise XmrError("give EMB_DIR (xmr encode output), or --model bm25 --data PATH")
    logging.getLogger("xmr.index").setLevel(logging.WARNING)
    index = index_embeddings(
        args.emb_dir,
        args.out,
        args.spec,
        kind=args.kind,
        fusion=args.fused,
        exact_max=args.exact_max,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        train_size=args.train_size,
        multi_vector=args.multi_vector,
        backend=args.backend,
        uri=args.uri,
        collection=args.collection,
    )
    if args.json:
        print(json.dumps(index.info(), indent=2, ensure_ascii=False))
        return 0
    m = index.manifest
    if m.get("auto_reason"):
        print(f"auto: {m['auto_reason']}")
    per = f", {index.item_vectors} vectors each" if index.item_vectors > 1 else ""
    if m.get("pooled_vectors"):
        per = f", each the mean of its {m['pooled_vectors']} vectors"
    what = "items" if per else "vectors"
    print(
        f"built {m['index']['type']} index of {len(index)} {what}{per} (dim {index.dim}) in "
        f"{args.out}"
    )
    _print_items(m.get("source") or {})
    _print_recall(m.get("recall"))
    return 0


def _print_items(source: dict) -> None:
    """What the items of a BLIP-2 multimodal index are, and which were left out."""
    fusion = source.get("fusion") or {}
    if fusion.get("kind") != "multimodal":
        return
    parts = [f"items: {fusion['items']} BLIP-2 multimodal (image + first caption)"]
    if fusion.get("image_only"):
        parts.append(f"{fusion['image_only']} of them without a caption (image vectors)")
    if fusion.get("caption_only"):
        parts.append(f"{fusion['caption_only']} caption only (caption vector repeated over K)")
    print(", ".join(parts))
    if fusion.get("caption_only_left_out"):
        print(
            f"left out: {fusion['caption_only_left_out']} item(s) with a caption but no image "
            "(encode --kinds multimodal,captions to index them by their caption)"
        )


def _run_build_bm25(args: argparse.Namespace) -> int:
    from xmr.errors import XmrError
    from xmr.index.bm25_index import is_bm25_spec
    from xmr.workflows.index_build import index_texts

    if not is_bm25_spec(args.model) or args.data is None or args.emb_dir is not None:
        raise XmrError(
            "a text index is built with --model bm25[:...] --data PATH (and no EMB_DIR); dense "
            "models index embeddings: xmr encode, then xmr index build EMB_DIR"
        )
    index = index_texts(args.data, args.out, args.model, format=args.format, split=args.split)
    if args.json:
        print(json.dumps(index.info(), indent=2, ensure_ascii=False))
        return 0
    cfg = index.manifest["index"]
    print(
        f"built BM25 index of {len(index)} documents (tokenizer {cfg['tokenizer']}, k1 "
        f"{cfg['k1']:g}, b {cfg['b']:g}, {cfg['method']}, vocabulary {cfg['vocabulary']}) in "
        f"{args.out}"
    )
    return 0


def run_add(args: argparse.Namespace) -> int:
    from xmr.errors import XmrError

    if (args.emb_dir is None) == (args.data is None):
        raise XmrError("give EMB_DIR (a vector index) or --data PATH (a BM25 index), not both")
    if args.data is not None:
        if args.kind is not None:
            raise XmrError("--kind is for embeddings; a BM25 index adds texts")
        index, added = add_texts(
            args.index_dir, args.data, format=args.format, split=args.split, upsert=args.upsert
        )
        if args.json:
            print(json.dumps({"added": added, **index.info()}, indent=2, ensure_ascii=False))
        else:
            print(f"added {added} documents; {args.index_dir} now holds {len(index)}")
        return 0
    index, added = add_embeddings(args.index_dir, args.emb_dir, kind=args.kind, upsert=args.upsert)
    if args.json:
        print(json.dumps({"added": added, **index.info()}, indent=2, ensure_ascii=False))
        return 0
    print(f"added {added} vectors; {args.index_dir} now holds {len(index)}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    index, removed = delete_items(args.index_dir, args.ids, missing_ok=args.missing_ok)
    if args.json:
        out = {"deleted": removed, "not_found": sorted(set(args.ids) - set(removed))}
        print(json.dumps({**out, **index.info()}, indent=2, ensure_ascii=False))
        return 0
    skipped = len(set(args.ids) - set(removed))
    print(
        f"deleted {len(removed)} item(s){f' ({skipped} not found)' if skipped else ''}; "
        f"{args.index_dir} now holds {len(index)}"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from xmr.index import is_lexical, open_index

    index = open_index(args.index_dir)
    info = index.info()
    if args.json or is_lexical(index):  # a BM25 index: its settings as JSON
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    idx = info["index"]
    params = ", ".join(f"{k}={idx[k]}" for k in ("nlist", "nprobe", "efSearch") if k in idx)
    print(f"index:    {info['path']}")
    print(
        f"type:     {idx['type']} ({'exact' if idx.get('exact') else 'approximate'}"
        f"{', ' + params if params else ''}; {idx.get('device', 'cpu')})"
    )
    if info.get("item_vectors", 1) > 1:  # multi-vector items, ranked by max-sim
        print(
            f"vectors:  {info['count']} items x {info['item_vectors']} vectors x {info['dim']} "
            f"({info['metric']}, max over each item's vectors)"
        )
    else:
        print(f"vectors:  {info['count']} x {info['dim']} ({info['metric']})")
    if idx.get("collection"):  # a Milvus index
        where = idx.get("uri") or f"{info['path']}/{idx.get('database')} (milvus-lite)"
        print(f"milvus:   collection {idx['collection']} at {where}")
    print(f"model:    {info['model']}")
    if info.get("items"):
        fusion = info.get("fusion") or {}
        said = {"multimodal": "BLIP-2's Q-Former over image + first caption, K vectors",
                "weighted": f"weight {fusion.get('weight')}"}.get(fusion.get("kind"))  # fmt: skip
        print(f"items:    {info['items']}{f' ({said})' if said else ''}")
    if info.get("auto_reason"):
        print(f"auto:     {info['auto_reason']}")
    _print_recall(info.get("recall"), prefix="recall:   ")
    if info.get("categories"):
        cats = ", ".join(f"{c} ({n})" for c, n in list(info["categories"].items())[:10])
        print(f"categories: {cats}")
    print(f"created:  {info['created']} (xmr {info['xmr_version']}); updated {info['updated']}")
    return 0


def _print_recall(recall, prefix: str = "") -> None:
    if recall:
        print(
            f"{prefix}recall@{recall['k']} vs exact search: {recall['value']:.4f} "
            f"({recall['queries']} queries from the {recall['query_source']})"
        )
