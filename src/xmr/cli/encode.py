"""``xmr encode``: embed a data set split into resumable shards."""

from __future__ import annotations

import argparse
import json
import os

DEFAULT_WORKERS = max(1, min(8, (os.cpu_count() or 2) - 1))


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
    p.add_argument("--model", required=True, help="model spec (hf:DIR, open_clip:..., a dir)")
    p.add_argument("--data", required=True, metavar="PATH", help="data set directory or file")
    p.add_argument("--format", default=None, help="data set format (default: detected)")
    p.add_argument("--split", default=None, help="split to encode (default: the only one)")
    p.add_argument("--out", required=True, metavar="DIR", help="embeddings directory")
    p.add_argument(
        "--kinds",
        default=None,
        help="what to encode, comma-separated: images, texts (queries), captions (first "
        "caption of each item) [images,texts; captions,texts for a corpus without images]",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"image decoding processes [{DEFAULT_WORKERS}: one core is left to the model]",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--shard-size", type=int, default=4096, help="inputs per shard [4096]")
    p.add_argument("--no-draft", action="store_true", help="always decode JPEGs at full size")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    from xmr.cli.data import add_skip_bad_argument

    add_skip_bad_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.cli.data import report_skipped
    from xmr.data.readers import load_dataset
    from xmr.encode import encode_split
    from xmr.models import create_encoder

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
