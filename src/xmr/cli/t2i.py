"""``xmr t2i validate | stats | evaluate | generate | tiny-inception | tiny-pipeline``: MUGE
text-to-image submissions, their metrics and their generation."""

from __future__ import annotations

import argparse
import json
import sys

from xmr.cli import options


def _progress(args: argparse.Namespace):
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return None

    def report(*values) -> None:
        *stage, done, total = values
        prefix = f"{stage[0]}: " if stage else ""
        end = "\n" if done == total else ""
        print(f"\r{prefix}{done}/{total} images", end=end, file=sys.stderr, flush=True)

    return report


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inception", required=True, metavar="W", help="FID Inception weights file")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    options.add_device(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "t2i", help="text-to-image (MUGE ECommerce-T2I): validate, FID/IS/R-precision, generate"
    )
    actions = parser.add_subparsers(dest="t2i_command", metavar="ACTION")
    actions.required = True

    v = actions.add_parser("validate", help="check a submission against its texts file")
    v.add_argument("pred", metavar="PRED.tsv", help="the submission (image_id<TAB>base64)")
    v.add_argument("--texts", required=True, metavar="TSV", help="T2I_*.txt.tsv it answers")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=run_validate)

    s = actions.add_parser("stats", help="cache the Inception statistics of real images")
    s.add_argument("--images", required=True, metavar="TSV", help="image TSV (id<TAB>base64)")
    s.add_argument("--out", required=True, metavar="STATS.npz", help="statistics file to write")
    _common(s)
    s.add_argument("--json", action="store_true", help="print a JSON summary")
    s.set_defaults(func=run_stats)

    e = actions.add_parser(
        "evaluate",
        help="FID, IS (and R-precision, CLIP score with --model) of a submission",
        description="Validate the submission, then score it: FID against --real (images or "
        "cached statistics), IS (10 splits), and with --model the AttnGAN R-precision and "
        "the CLIP score. Definitions: README, section 'Text-to-image evaluation'.",
    )
    e.add_argument("--generated", required=True, metavar="PRED.tsv", help="the submission")
    e.add_argument("--texts", required=True, metavar="TSV", help="T2I_*.txt.tsv it answers")
    e.add_argument("--real", metavar="TSV|NPZ", help="real images or `xmr t2i stats` output")
    e.add_argument("--model", metavar="SPEC", help="image-text model for R-precision/CLIP score")
    e.add_argument("--categories", metavar="TSV", help="id<TAB>category for a breakdown")
    _common(e)
    e.add_argument("--is-splits", type=int, default=10, help="IS splits")
    e.add_argument(
        "--is-shuffle-seed",
        type=int,
        default=None,
        help="permute images before the IS splits with this seed (torch-fidelity: 2020; default: off)",
    )
    e.add_argument("--r-candidates", type=int, default=100, help="R-precision candidates")
    e.add_argument("--r-repeats", type=int, default=10, help="R-precision repetitions")
    e.add_argument("--seed", type=int, default=0, help="R-precision sampling seed")
    e.add_argument("--clip-scale", type=float, default=100.0, help="CLIP score scale")
    e.add_argument("--out", metavar="REPORT.json", help="also write the report there")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=run_evaluate)

    g = actions.add_parser("generate", help="write a submission with a diffusers pipeline")
    g.add_argument("--model", required=True, metavar="SPEC", help="diffusers:<hub id or dir>")
    g.add_argument("--texts", required=True, metavar="TSV", help="T2I_*.txt.tsv to illustrate")
    g.add_argument("--out", required=True, metavar="PRED.tsv", help="submission to write")
    g.add_argument("--steps", type=int, default=50, help="denoising steps")
    g.add_argument("--guidance", type=float, default=7.5, help="guidance scale")
    g.add_argument(
        "--size", type=int, default=None, metavar="PX", help="image size (default: the model's)"
    )
    g.add_argument("--seed", type=int, default=0, help="run seed")
    g.add_argument("--batch-size", type=int, default=1, help="prompts per call")
    g.add_argument("--negative-prompt", default=None, help="negative prompt for every text")
    options.add_device(g)
    g.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    g.add_argument(
        "--image-codec",
        dest="image_format",
        default="png",
        choices=["png", "jpeg"],
        help="how generated images are stored in the TSV",
    )
    g.add_argument("--limit", type=int, default=None, help="only the first N texts")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    g.add_argument("--json", action="store_true", help="print a JSON summary")
    g.set_defaults(func=run_generate)

    ti = actions.add_parser(
        "tiny-inception", help="write a random-weight FID Inception (offline trials, tests)"
    )
    options.add_out(ti, "file to write", metavar="FILE", legacy_positional=True)
    ti.add_argument(
        "--out-format",
        default="state_dict",
        choices=["state_dict", "torchscript"],
        help="torch-fidelity / pytorch-fid state dict, or clean-fid's TorchScript file",
    )
    options.add_deprecated_alias(
        ti, "--format", "--out-format", dest="out_format", choices=["state_dict", "torchscript"]
    )
    options.add_json(ti, "print a JSON summary")
    ti.add_argument("--seed", type=int, default=0, help="weight seed")
    ti.set_defaults(func=run_tiny_inception)

    tp = actions.add_parser(
        "tiny-pipeline", help="write a tiny random diffusers pipeline (offline trials, tests)"
    )
    options.add_out(tp, "directory to write", legacy_positional=True)
    tp.add_argument("--texts", metavar="TSV", help="T2I texts whose words build the vocabulary")
    tp.add_argument("--seed", type=int, default=0, help="weight seed")
    options.add_json(tp, "print a JSON summary")
    tp.set_defaults(func=run_tiny_pipeline)


def run_validate(args: argparse.Namespace) -> int:
    from xmr.eval.t2i_submission import validate_t2i_submission

    check = validate_t2i_submission(args.pred, args.texts)
    if args.json:
        print(json.dumps(check.to_dict(), indent=2, ensure_ascii=False))
    elif check.ok:
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in check.sizes.most_common(5))
        modes = ", ".join(f"{m}: {n}" for m, n in check.modes.most_common())
        print(f"{args.pred}: valid, {check.expected} images ({sizes}; modes {modes})")
    else:
        print(check.describe(limit=len(check.problems)))
        print(f"{args.pred}: {len(check.problems)} problems", file=sys.stderr)
    return 0 if check.ok else 1


def run_stats(args: argparse.Namespace) -> int:
    from xmr.workflows.t2i import compute_real_stats

    stats = compute_real_stats(
        args.images,
        args.inception,
        out=args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        device=None if args.device == "auto" else args.device,
        progress=_progress(args),
    )
    summary = {"out": args.out, **stats.meta()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote statistics of {stats.count} images to {args.out} (weights {stats.weights_sha256})"
        )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from xmr.workflows.t2i import evaluate_t2i, read_categories

    report = evaluate_t2i(
        args.generated,
        args.texts,
        args.inception,
        real=args.real,
        model=args.model,
        categories=read_categories(args.categories) if args.categories else None,
        batch_size=args.batch_size,
        workers=args.workers,
        device=None if args.device == "auto" else args.device,
        is_splits=args.is_splits,
        is_shuffle_seed=args.is_shuffle_seed,
        r_candidates=args.r_candidates,
        r_repeats=args.r_repeats,
        seed=args.seed,
        clip_scale=args.clip_scale,
        out=args.out,
        progress=_progress(args),
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"images       {report['count']}")
    print(f"inception    {report['inception']['format']} sha256 {report['inception']['sha256']}")
    fid = report["fid"]
    print(f"FID          {fid:.4f}" if fid is not None else "FID          (no --real)")
    print(
        f"IS           {report['is_mean']:.4f} ± {report['is_std']:.4f} ({report['is_splits']} splits)"
    )
    if "r_precision" in report:
        r = report["r_precision"]
        print(f"R-precision  {r['mean']:.4f} ± {r['std']:.4f} (1 of {r['candidates']})")
        print(f"CLIP score   {report['clip_score']['mean']:.4f}")
    for name, entry in report.get("per_category", {}).items():
        values = ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if isinstance(v, float))
        print(f"  {name}: {entry['count']} images; {values}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from xmr.workflows.t2i_generate import generate_t2i

    summary = generate_t2i(
        args.model,
        args.texts,
        args.out,
        steps=args.steps,
        guidance=args.guidance,
        size=args.size,
        seed=args.seed,
        batch_size=args.batch_size,
        negative_prompt=args.negative_prompt,
        device=None if args.device == "auto" else args.device,
        dtype=args.dtype,
        image_format=args.image_format,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=_progress(args),
    )
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(
            f"wrote {summary['count']} images to {summary['out']} "
            f"({summary['generated']} generated, {summary['resumed']} resumed)"
        )
    return 0


def run_tiny_inception(args: argparse.Namespace) -> int:
    from xmr.models.inception import file_sha256
    from xmr.models.tiny_inception import random_fid_inception, save_fid_inception

    path = save_fid_inception(random_fid_inception(args.seed), args.out, args.out_format)
    sha = file_sha256(path)
    if args.json:
        print(json.dumps({"out": str(path), "format": args.out_format, "sha256": sha}))
        return 0
    print(f"wrote a random-weight FID Inception ({args.out_format}) to {path}, sha256 {sha}")
    return 0


def run_tiny_pipeline(args: argparse.Namespace) -> int:
    from xmr.data.readers.muge_t2i import read_t2i_texts
    from xmr.models.tiny_diffusers import create_tiny_text2image

    texts = [t.text for t in read_t2i_texts(args.texts)] if args.texts else None
    out = create_tiny_text2image(args.out, texts, seed=args.seed)
    if args.json:
        print(json.dumps({"out": str(out), "model": f"diffusers:{out}"}))
        return 0
    print(f"wrote a tiny random diffusers pipeline to {out}; use it as --model diffusers:{out}")
    return 0
