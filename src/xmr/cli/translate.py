"""``xmr translate``: translate and clean a split's queries and captions (seed 001)."""

from __future__ import annotations

import argparse
import json
import sys

from xmr.cli.caption import add_model_args, make_captioner


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "translate", help="translate and clean query texts and captions with an LLM"
    )
    parser.add_argument("--data", required=True, help="data set file or directory")
    parser.add_argument("--format", default=None, help="data set format (detected when omitted)")
    parser.add_argument("--split", default=None, help="split to translate")
    parser.add_argument("--images", default=None, help="image directory or TSV, if elsewhere")
    parser.add_argument(
        "--captions", default=None, help="captions.jsonl of xmr caption to add to the items first"
    )
    parser.add_argument("--out", required=True, help="output directory (resumed when re-run)")
    parser.add_argument("--target", default="en", help="target language code")
    parser.add_argument("--what", default="queries,captions", help="queries, captions or both")
    add_model_args(parser)
    parser.add_argument(
        "--prompt", default=None, help="request template with {text} (and {language})"
    )
    parser.add_argument(
        "--partial", action="store_true", help="send nothing; write outputs from the cache"
    )
    for step, what in (
        ("foreign", "characters outside the target script"),
        ("empty", "texts left empty"),
        ("duplicates", "duplicate texts"),
        ("uncaptioned", "items left without a caption"),
    ):
        parser.add_argument(f"--keep-{step}", action="store_true", help=f"do not drop {what}")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.workflows.translate import translate_dataset

    summary = translate_dataset(
        args.data,
        args.out,
        make_captioner(args),
        target=args.target,
        what=tuple(w.strip() for w in args.what.split(",") if w.strip()),
        format=args.format,
        split=args.split,
        images=args.images,
        captions=args.captions,
        prompt=args.prompt,
        partial=args.partial,
        drop_foreign=not args.keep_foreign,
        drop_empty=not args.keep_empty,
        drop_duplicates=not args.keep_duplicates,
        drop_uncaptioned=not args.keep_uncaptioned,
        progress=sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(
            f"translated {summary['translated']}, cached {summary['cached']}, failed "
            f"{summary['failed']} of {summary['texts']} texts; wrote {summary['save_path']} "
            f"({summary['items']} items, {summary['queries']} queries)"
        )
        dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v)
        print(f"dropped: {dropped or 'nothing'}")
    return 1 if summary["failed"] else 0
