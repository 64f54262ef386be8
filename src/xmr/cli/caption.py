"""``xmr caption``: caption a split's images with a vision LLM and write a BEIR text set."""

from __future__ import annotations

import argparse
import json
import sys

from xmr.cli import options
from xmr.errors import XmrError


def add_model_args(parser: argparse.ArgumentParser, *, default_concurrency: int = 8) -> None:
    """The options that choose and drive the model (shared by ``xmr translate``)."""
    parser.add_argument("--api-base", default=None, help="OpenAI-compatible API base URL (.../v1)")
    parser.add_argument("--api-model", default=None, help="model name the API serves")
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (unset is fine for local servers)",
    )
    parser.add_argument(
        "--model", default=None, help="a local captioner instead of an API: hf:<id or dir>"
    )
    parser.add_argument("--system", default=None, help="system message text")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap on answer tokens")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (0 is evalscope's)"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed sent to the model")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=default_concurrency,
        help="requests in flight",
    )
    parser.add_argument("--retries", type=int, default=5, help="retries on 429/5xx/timeouts")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--batch-size", type=int, default=8, help="local model batch size")
    options.add_device(parser)


def make_captioner(args: argparse.Namespace):
    from xmr.models.captioners import GenerationParams, create_captioner

    params = GenerationParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, system=args.system
    )
    if args.model and (args.api_base or args.api_model):
        raise XmrError("give either --model or --api-base/--api-model, not both")
    if args.model:
        return create_captioner(
            args.model,
            params=params,
            device=None if args.device == "auto" else args.device,
            batch_size=args.batch_size,
        )
    if not (args.api_base and args.api_model):
        raise XmrError("give --api-base URL and --api-model NAME, or --model SPEC")
    return create_captioner(
        f"api:{args.api_model}",
        params=params,
        api_base=args.api_base,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout=args.timeout,
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption", help="caption images with a vision LLM into a BEIR text retrieval set"
    )
    parser.add_argument("--data", required=True, help="data set file or directory")
    parser.add_argument("--format", default=None, help="data set format (detected when omitted)")
    parser.add_argument("--split", default=None, help="split to caption")
    parser.add_argument("--images", default=None, help="image directory or TSV, if elsewhere")
    parser.add_argument("--out", required=True, help="output directory (resumed when re-run)")
    add_model_args(parser)
    parser.add_argument("--prompt", default=None, help="user text (default: evalscope's prompt)")
    parser.add_argument("--limit", type=int, default=None, help="caption only the first N images")
    parser.add_argument(
        "--ids",
        choices=["dataset", "evalscope"],
        default="dataset",
        help="BEIR ids: the data set's own (default; cannot collide) or evalscope's 0, 1, ...",
    )
    parser.add_argument(
        "--partial", action="store_true", help="send nothing; write outputs from the cache"
    )
    parser.add_argument(
        "--dataset-copy",
        action="store_true",
        help="also write OUT/dataset: the split with its captions, as a BEIR set with images",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xmr.workflows.caption import caption_dataset

    summary = caption_dataset(
        args.data,
        args.out,
        make_captioner(args),
        format=args.format,
        split=args.split,
        images=args.images,
        prompt=args.prompt,
        limit=args.limit,
        ids=args.ids,
        partial=args.partial,
        dataset_copy=args.dataset_copy,
        progress=sys.stderr.isatty(),
    )
    data = summary.to_dict()
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        mean = data["mean_latency_s"]
        print(
            f"captioned {data['captioned']}, cached {data['cached']}, failed {data['failed']}"
            f"{f', missing {m}' if (m := data['missing']) else ''} "
            f"of {data['items']} images; tokens {data['prompt_tokens']} prompt + "
            f"{data['completion_tokens']} completion; mean latency "
            f"{'-' if mean is None else f'{mean:.3f} s'}; wall {data['wall_s']:.1f} s"
        )
        for example in data["failure_examples"]:
            print(f"  failed: {example}")
        print(
            f"wrote {data['save_path']} ({data['retrieval']['corpus']} documents, "
            f"{data['retrieval']['queries']} queries, ids {data['retrieval']['ids']})"
        )
    return 1 if data["failed"] else 0
