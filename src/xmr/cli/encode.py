"""``xmr encode``: embed a data set split into resumable shards."""

from __future__ import annotations

import argparse
import json
import sys

from xmr.cli import options
from xmr.cli.data import add_skip_bad_argument, report_skipped
from xmr.data.readers import load_dataset
from xmr.encode import choose_loader, encode_split
from xmr.encode.engines import EngineOptions, list_engines
from xmr.errors import XmrError
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
        "caption of each item), multimodal (BLIP-2: each item's image read with its first "
        "caption, K vectors; `xmr index build --fused blip2`) (default: images,texts; "
        "captions,texts for a corpus without images)",
    )
    options.add_batch_size(
        p, default=None,
        help="inputs per forward pass (default: chosen from the device: 64 on a CPU, 256 on a GPU)",
    )  # fmt: skip
    options.add_workers(
        p, default=None,
        help="image decoding processes (default: chosen from the machine: half the cores when "
        "the model runs on the CPU, all but one with a GPU; the choice is printed)",
    )  # fmt: skip
    options.add_device(p)
    options.add_precision(p)
    p.add_argument(
        "--shard-size", type=options.positive_int, default=4096, metavar="N",
        help="inputs per shard",
    )  # fmt: skip
    options.add_draft(p)
    options.add_image_backend(p)
    options.add_runtime(p)
    # The former opt-out: full decoding is the default now.
    p.add_argument("--no-draft", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    options.add_json(p, "print the summary as JSON")
    add_skip_bad_argument(p)
    ray = p.add_argument_group("engine (where decoding and the model run)")
    ray.add_argument(
        "--engine", default="local", choices=list_engines(),
        help="local: decoding workers and the model on this machine; ray: decoding tasks and "
        "model actors on a Ray cluster (pip install 'xmr[ray]'), the same shards either way",
    )  # fmt: skip
    ray.add_argument(
        "--ray-address", default=None, metavar="ADDR",
        help="Ray cluster to join: auto (the one `ray start` made on this node), "
        "ray://HOST:10001 or HOST:6379 (default: start Ray on this machine for the run)",
    )  # fmt: skip
    ray.add_argument(
        "--actors", type=options.positive_int, default=None, metavar="N",
        help="model actors, one model load each (default: the cluster's GPUs / "
        "--gpus-per-actor, or half its CPUs)",
    )  # fmt: skip
    ray.add_argument(
        "--gpus-per-actor", type=float, default=0.0, metavar="G",
        help="GPUs each model actor reserves (0.5: two actors share one; default 0: the model "
        "runs on CPUs)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.no_draft:
        print("xmr: warning: --no-draft is the default now (see --draft)", file=sys.stderr)
    dataset = load_dataset(args.data, args.format, args.split, skip_bad=args.skip_bad)
    report_skipped(dataset, args.data)
    split = dataset.split(args.split)
    engine_options = _engine_options(args)
    encoder = _driver_encoder(args)
    if args.kinds is None:
        has_images = any(item.image is not None for item in split.items.values())
        kinds = ["images" if has_images else "captions", "texts"]
    else:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    loader = choose_loader(encoder.device, args.workers, args.batch_size)
    if not args.json and args.engine == "local":
        print(
            f"xmr encode: {loader.workers} decoding worker(s), batch {loader.batch_size} "
            f"({loader.reason}){'; draft JPEG decoding' if args.draft else ''}"
            f"{'; torchvision image backend' if args.image_backend == 'torchvision' else ''}",
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
        source=dataset.source(args.data, split.name),
        engine=args.engine,
        engine_options=engine_options,
    )
    if args.json:
        out = {**summary.to_dict(), **dataset.skip_record()}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    if args.engine != "local" and summary.engine.get("actors"):
        e = summary.engine
        print(
            f"{e['engine']}: {e['actors']} model actor(s), {e['gpus_per_actor']:g} GPU(s) each, "
            f"cluster of {e['cluster_cpus']:g} CPU(s) and {e['cluster_gpus']:g} GPU(s)"
        )
    for kind, s in summary.kinds.items():
        reused = f", {s.shards_reused} of {s.shards} shards reused" if s.shards_reused else ""
        print(f"{kind}: {s.encoded} of {s.count} encoded ({s.items_per_s:g}/s{reused})")
        if kind == "images" and s.seconds > 0 and s.encoded and args.engine == "local":
            print(f"  waiting for data {s.data_wait_share:.0%} of {s.seconds:g} s: {_verdict(s)}")
        if s.failed:
            print(f"  {s.failed} skipped, see {args.out}/failed.jsonl; first:")
            for f in s.first_failures:
                print(f"    {f['id']}: {f['error']}")
    print(f"embeddings in {summary.out_dir}")
    return 0


def _engine_options(args: argparse.Namespace) -> EngineOptions | None:
    if args.engine == "local":
        if args.ray_address or args.actors or args.gpus_per_actor:
            raise XmrError("--ray-address, --actors and --gpus-per-actor need --engine ray")
        return None
    if args.device not in (None, "auto"):
        raise XmrError(
            "--device is for the local engine; with --engine ray the model actors run on "
            "GPUs when --gpus-per-actor > 0, else on CPUs"
        )
    if args.gpus_per_actor < 0:
        raise XmrError(f"--gpus-per-actor must be >= 0, got {args.gpus_per_actor:g}")
    return EngineOptions(args.ray_address, args.actors, args.gpus_per_actor)


def _driver_encoder(args: argparse.Namespace):
    """The encoder this process uses: locally the model itself; with Ray only its manifest and
    fingerprint (on the CPU), while the actors load the model on their own devices."""
    if args.engine == "local":
        return create_encoder(
            args.model, device=args.device, precision=args.precision, runtime=args.runtime,
            image_backend=args.image_backend,
        )  # fmt: skip
    if args.runtime != "eager":  # the actors load the model themselves, eagerly
        raise XmrError("--runtime onnx is an option of the local engine, not of --engine ray")
    gpu_actors = args.gpus_per_actor > 0
    encoder = create_encoder(
        args.model, device="cpu", precision="fp32" if gpu_actors else args.precision,
        image_backend=args.image_backend,
    )  # fmt: skip
    if gpu_actors:  # fp16/bf16 are the GPU actors' autocast, whatever this CPU allows
        encoder.precision = args.precision
    return encoder


def _verdict(s) -> str:
    """Which side limits the speed: the data path (decoding) or the model."""
    if s.data_wait_share >= 0.5:
        return "the data path is the bottleneck (more --workers, or --draft for big JPEGs)"
    if s.data_wait_share <= 0.1:
        return "the model is the bottleneck"
    return "data path and model are close"
