"""``xmr encode``: embed a data set split into resumable shards."""

from __future__ import annotations

import argparse
import json
import os
import sys

# The decoding processes of evaluate / predict (encode chooses its own, see choose_loader).
DEFAULT_WORKERS = max(1, min(8, (os.cpu_count() or 2) - 1))
DRAFT_HELP = (
    "decode JPEGs at reduced scale (1/2..1/8, when at least twice the model's input): faster on "
    "big photos, but not the reference processor's pixels, so scores differ a little; recorded "
    "in manifests, and never mixed with fully decoded embeddings [off]"
)


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
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="inputs per forward pass [chosen from the device: 64 on a CPU, 256 on a GPU]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image decoding processes [chosen from the machine: half the cores when the model "
        "runs on the CPU, all but one with a GPU; the choice is printed]",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--shard-size", type=int, default=4096, help="inputs per shard [4096]")
    p.add_argument("--draft", action="store_true", help=DRAFT_HELP)
    p.add_argument("--no-draft", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.data.readers import load_dataset
    from xmr.encode import choose_loader, encode_split
    from xmr.models import create_encoder

    if args.no_draft:
        print("xmr: warning: --no-draft is the default now (see --draft)", file=sys.stderr)
    dataset = load_dataset(args.data, args.format, args.split)
    split = dataset.split(args.split)
    encoder = create_encoder(args.model, device=args.device, precision=args.precision)
    if args.kinds is None:
        has_images = any(item.image is not None for item in split.items.values())
        kinds = ["images" if has_images else "captions", "texts"]
    else:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    loader = choose_loader(encoder.device, args.workers, args.batch_size)
    if not args.json:
        print(
            f"xmr encode: {loader.workers} decoding worker(s), batch {loader.batch_size} "
            f"({loader.reason}){'; draft JPEG decoding' if args.draft else ''}",
            file=sys.stderr,
        )
    summary = encode_split(
        encoder,
        split,
        args.out,
        batch_size=loader.batch_size,
        workers=loader.workers,
        kinds=kinds,
        shard_size=args.shard_size,
        draft=args.draft,
        overwrite=args.overwrite,
        progress=not args.json,
        source={"path": str(args.data), "format": dataset.format, "split": split.name},
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
        return 0
    for kind, s in summary.kinds.items():
        reused = f", {s.shards_reused} of {s.shards} shards reused" if s.shards_reused else ""
        print(f"{kind}: {s.encoded} of {s.count} encoded ({s.items_per_s:g}/s{reused})")
        if kind == "images" and s.seconds > 0 and s.encoded:
            print(f"  waiting for data {s.data_wait_share:.0%} of {s.seconds:g} s: {_verdict(s)}")
        if s.failed:
            print(f"  {s.failed} skipped, see {args.out}/failed.jsonl; first:")
            for f in s.first_failures:
                print(f"    {f['id']}: {f['error']}")
    print(f"embeddings in {summary.out_dir}")
    return 0


def _verdict(s) -> str:
    """Which side limits the speed: the data path (decoding) or the model."""
    if s.data_wait_share >= 0.5:
        return "the data path is the bottleneck (more --workers, or --draft for big JPEGs)"
    if s.data_wait_share <= 0.1:
        return "the model is the bottleneck"
    return "data path and model are close"
