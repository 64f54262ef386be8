"""``xmr data inspect | convert | synth``: look at, convert and generate data sets."""

from __future__ import annotations

import argparse
import json
import sys


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="data set file or directory")
    parser.add_argument(
        "--format",
        default=None,
        help="data set format (track2, muge, tianchi, evalscope, beir, coco, csv, folder); "
        "detected from the files present when omitted",
    )
    parser.add_argument("--split", default=None, help="read only this split")
    parser.add_argument(
        "--images", default=None, help="image directory or TSV when it is not in the usual place"
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
    _add_source_args(convert)
    convert.add_argument("--to", required=True, choices=["evalscope", "beir", "csv"])
    convert.add_argument("out", help="output directory (new or empty)")
    convert.add_argument(
        "--no-copy-images",
        action="store_true",
        help="point at the original image files instead of copying them into OUT/images",
    )
    convert.set_defaults(func=run_convert)

    synth = actions.add_parser("synth", help="generate the synthetic traffic data set (track2)")
    synth.add_argument("out", help="output directory")
    synth.add_argument("--n-train", type=int, default=2000, help="train images (default 2000)")
    synth.add_argument("--n-test", type=int, default=500, help="test images (default 500)")
    synth.add_argument(
        "--n-valid", type=int, default=None, help="valid images (default: as many as --n-test)"
    )
    synth.add_argument(
        "--attribute-sets",
        type=int,
        default=40,
        help="distinct attribute sets shared by the splits (default 40)",
    )
    synth.add_argument(
        "--colours", type=int, default=8, help="palette size, 2-10 (default 8 of the 10)"
    )
    synth.add_argument(
        "--image-size", type=int, default=64, help="image side in pixels (default 64)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=run_synth)


def _load(args):
    from xmr.data.readers import load_dataset

    return load_dataset(
        args.path, args.format, args.split, images=args.images, skip_bad=args.skip_bad
    )


def run_inspect(args) -> int:
    from xmr.data.inspect import format_report, inspect_dataset

    report = inspect_dataset(_load(args), check_images=args.check_images)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0


def run_convert(args) -> int:
    from xmr.data.convert import convert_dataset

    dataset = _load(args)
    report_skipped(dataset, args.path)
    summary = convert_dataset(
        dataset, args.to, args.out, split=args.split, copy_images=not args.no_copy_images
    )
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
    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic

    root = generate_synthetic(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        n_valid=args.n_valid,
        image_size=args.image_size,
        seed=args.seed,
        n_attribute_sets=args.attribute_sets,
        n_colours=args.colours,
    )
    dataset = load_dataset(root, "track2")
    parts = [
        f"{name} {len(s.items)} images / {len(s.queries)} texts"
        for name, s in dataset.splits.items()
    ]
    print(f"wrote {root} (track2 layout): {', '.join(parts)}")
    return 0
