"""``xmr data inspect | convert | synth``: look at, convert and generate data sets."""

from __future__ import annotations

import argparse
import json
import sys

from xmr.cli import options
from xmr.data.convert import convert_dataset
from xmr.data.inspect import format_report, inspect_dataset
from xmr.data.readers import load_dataset
from xmr.data.synth import generate_synthetic
from xmr.data.synth_tianchi import generate_tianchi
from xmr.errors import XmrError

CONVERT_FORMATS = ("evalscope", "beir", "csv")
SYNTH_LAYOUTS = ("track2", "tianchi")


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="data set file or directory")
    parser.add_argument(
        "--format",
        default=None,
        metavar="F",
        help="data set format (track2, muge, tianchi, evalscope, beir, coco, csv, folder); "
        "(default: detected from the files present)",
    )
    options.add_split(parser, "read only this split (default: all)")
    parser.add_argument(
        "--images",
        default=None,
        metavar="DIR|TSV",
        help="image directory or TSV when it is not in the usual place",
    )
    add_skip_bad_argument(parser)


def add_skip_bad_argument(parser: argparse.ArgumentParser) -> None:
    """``--skip-bad``, for every command that reads a data set."""
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip malformed records of the data set (counted, the first reported and recorded "
        "in the outputs' manifests) instead of stopping at the first",
    )


def report_skipped(dataset, path=None) -> None:
    """Say on stderr how many bad records reading skipped (nothing when none were)."""
    warning = dataset.skipped_warning(path)
    if warning:
        print(f"xmr: warning: {warning}", file=sys.stderr)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect, convert and generate data sets")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    inspect = actions.add_parser(
        "inspect", help="counts, distributions and image problems of a data set"
    )
    _add_source_args(inspect)
    inspect.add_argument(
        "--check-images", action="store_true", help="decode every image (slow on big data sets)"
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)

    convert = actions.add_parser("convert", help="write a data set in another format")
    add_convert_arguments(convert)
    convert.set_defaults(func=run_convert)

    synth = actions.add_parser(
        "synth",
        help="generate a synthetic data set: traffic (track2) or e-commerce products (tianchi)",
    )
    add_synth_arguments(synth)
    synth.set_defaults(func=run_synth)


def add_convert_arguments(convert: argparse.ArgumentParser) -> None:
    """Every option of ``xmr data convert``."""
    _add_source_args(convert)
    options.add_out(
        convert, "output directory (new or empty; written whole, then renamed)",
        legacy_positional=True,
    )  # fmt: skip
    options.add_out_format(
        convert, "format to write", choices=CONVERT_FORMATS, required=True, old="--to"
    )
    convert.add_argument(
        "--no-copy-images",
        action="store_true",
        help="point at the original image files instead of copying them into OUT/images",
    )
    options.add_json(convert, "print the summary as JSON")


def add_synth_arguments(synth: argparse.ArgumentParser) -> None:
    """Every option of ``xmr data synth``."""
    options.add_out(
        synth, "output directory (new, empty or an earlier data synth output)",
        legacy_positional=True,
    )  # fmt: skip
    synth.add_argument(
        "--layout",
        choices=SYNTH_LAYOUTS,
        default="track2",
        help="track2: vehicles and pedestrians with Track2 label files (seed 000); tianchi: "
        "products (type, colour, pattern in the pixels, a theme in the texts only) with keyword "
        "queries, 3 captions per train image and 1 per valid/test item (seed 001)",
    )
    synth.add_argument("--n-train", type=options.non_negative_int, default=2000, metavar="N",
                       help="train images")  # fmt: skip
    synth.add_argument("--n-test", type=options.non_negative_int, default=500, metavar="N",
                       help="test images")  # fmt: skip
    synth.add_argument(
        "--n-valid",
        type=options.non_negative_int,
        default=None,
        metavar="N",
        help="valid images (default: as many as --n-test)",
    )
    synth.add_argument(
        "--attribute-sets",
        type=int,
        default=None,
        metavar="N",
        help="track2: distinct attribute sets shared by the splits (default: 40)",
    )
    synth.add_argument(
        "--max-relevant",
        type=options.positive_int,
        default=None,
        metavar="N",
        help="tianchi: the most relevant items of a valid or test query (default: 10)",
    )
    synth.add_argument("--colours", type=int, default=8, metavar="N", help="palette size, 2-10")
    synth.add_argument("--image-size", type=int, default=64, metavar="PX", help="image side")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    options.add_json(synth, "print the summary as JSON")


def _load(args):
    return load_dataset(
        args.path, args.format, args.split, images=args.images, skip_bad=args.skip_bad
    )


def run_inspect(args) -> int:
    report = inspect_dataset(_load(args), check_images=args.check_images)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0


def run_convert(args) -> int:
    dataset = _load(args)
    report_skipped(dataset, args.path)
    summary = convert_dataset(
        dataset, args.out_format, args.out, split=args.split, copy_images=not args.no_copy_images
    )
    if args.json:
        print(json.dumps({**summary, "n_skipped": dataset.skipped}, indent=2, default=str))
        return 0
    print(
        f"wrote {summary['out']} ({summary['format']}, split {summary['split']}): "
        f"{summary['n_items']} items, {summary['n_queries']} queries, "
        f"{summary['n_relevant_pairs']} relevant pairs, {summary['n_images_written']} image files"
    )
    if summary["dropped_items"] or summary["dropped_queries"]:
        print(
            f"left out what {summary['format']} cannot hold: {summary['dropped_items']} items "
            f"without an image, {summary['dropped_queries']} queries without a relevant image",
            file=sys.stderr,
        )
    return 0


def run_synth(args) -> int:
    if args.layout == "tianchi":
        if args.attribute_sets is not None:
            raise XmrError("--attribute-sets is for --layout track2; tianchi products are drawn "
                           "from all type, colour, pattern and theme combinations")  # fmt: skip
        root = generate_tianchi(
            args.out,
            n_train=args.n_train,
            n_test=args.n_test,
            n_valid=args.n_valid,
            image_size=args.image_size,
            seed=args.seed,
            n_colours=args.colours,
            max_relevant=10 if args.max_relevant is None else args.max_relevant,
        )
    else:
        if args.max_relevant is not None:
            raise XmrError("--max-relevant is for --layout tianchi")
        root = generate_synthetic(
            args.out,
            n_train=args.n_train,
            n_test=args.n_test,
            n_valid=args.n_valid,
            image_size=args.image_size,
            seed=args.seed,
            n_attribute_sets=40 if args.attribute_sets is None else args.attribute_sets,
            n_colours=args.colours,
        )
    dataset = load_dataset(root, args.layout)
    if args.json:
        splits = {
            name: {"n_items": len(s.items), "n_queries": len(s.queries)}
            for name, s in dataset.splits.items()
        }
        print(json.dumps({"out": str(root), "format": args.layout, "splits": splits}, indent=2))
        return 0
    noun = "images" if args.layout == "track2" else "items"
    parts = [
        f"{name} {len(s.items)} {noun} / {len(s.queries)} {'texts' if noun == 'images' else 'queries'}"
        for name, s in dataset.splits.items()
    ]
    print(f"wrote {root} ({args.layout} layout): {', '.join(parts)}")
    return 0
