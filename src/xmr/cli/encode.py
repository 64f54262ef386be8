"""``xmr encode``: embed a data set split into resumable shards."""

from __future__ import annotations

import argparse
import json

from xmr.cli import options
from xmr.cli.data import add_skip_bad_argument, report_skipped
from xmr.data.readers import load_dataset
from xmr.encode import encode_split
from xmr.models import create_encoder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a data set's images and texts into embedding shards",
        description=(
            "Encode a split's item images and query texts with a model into OUT: shards of "
            "float32 embeddings with their ids, the item metadata and a manifest naming the "
            "model. A killed run resumes from its finished shards when re-run with the same "
            "arguments; undecodable images are reported in OUT/failed.jsonl and skipped."
        ),
    )
    add_encode_arguments(p)
    p.set_defaults(func=run)


def add_encode_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``xmr encode``."""
    p.add_argument(
        "--model", required=True, metavar="M", help="model spec (hf:DIR, open_clip:..., a dir)"
    )
    p.add_argument("--data", required=True, metavar="PATH", help="data set directory or file")
    options.add_data_format(p)
    options.add_split(p, "split to encode (default: the only one)")
    options.add_out(p, "embeddings directory (new, empty or an earlier run's, which resumes)")
    p.add_argument(
        "--kinds",
        default=None,
        metavar="K,K",
        help="what to encode, comma-separated: images, texts (queries), captions (first "
        "caption of each item) (default: images,texts; captions,texts for a corpus without "
        "images)",
    )
    options.add_batch_size(p)
    options.add_workers(p)
    options.add_device(p)
    options.add_precision(p)
    p.add_argument(
        "--shard-size", type=options.positive_int, default=4096, metavar="N",
        help="inputs per shard",
    )  # fmt: skip
    p.add_argument("--no-draft", action="store_true", help="always decode JPEGs at full size")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    options.add_json(p, "print the summary as JSON")
    add_skip_bad_argument(p)


def run(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data, args.format, args.split, skip_bad=args.skip_bad)
    report_skipped(dataset, args.data)
    split = dataset.split(args.split)
    encoder = create_encoder(args.model, device=args.device, precision=args.precision)
    if args.kinds is None:
        has_images = any(item.image is not None for item in split.items.values())
        kinds = ["images" if has_images else "captions", "texts"]
    else:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    summary = encode_split(
        encoder,
        split,
        args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        kinds=kinds,
        shard_size=args.shard_size,
        draft=not args.no_draft,
        overwrite=args.overwrite,
        progress=not args.json,
        source=dataset.source(args.data, split.name),
    )
    if args.json:
        out = {**summary.to_dict(), **dataset.skip_record()}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for kind, s in summary.kinds.items():
        reused = f", {s.shards_reused} of {s.shards} shards reused" if s.shards_reused else ""
        print(f"{kind}: {s.encoded} of {s.count} encoded ({s.items_per_s:g}/s{reused})")
        if s.failed:
            print(f"  {s.failed} skipped, see {args.out}/failed.jsonl; first:")
            for f in s.first_failures:
                print(f"    {f['id']}: {f['error']}")
    print(f"embeddings in {summary.out_dir}")
    return 0
