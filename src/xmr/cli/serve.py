"""``xmr serve INDEX_DIR``: the search API and web page on uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from xmr.cli import options
from xmr.errors import XmrError
from xmr.serve import create_app
from xmr.serve.limits import (
    INDEX_ENV,
    SETTINGS_ENV,
    ServeSettings,
    check_listen_address,
    read_attribute_names,
    token_from_env,
)
from xmr.serve.protocol import json_error_protocol


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve search over an index: HTTP API, web page at /, API docs at /docs",
        description=(
            "Serve an index built by `xmr index build`: a JSON API (/api/search, /api/items/ID/"
            "image, /api/info, /api/health), API docs at /docs and a search page at /. "
            "Read-only unless started with --allow-writes and a token. With --rerank MODEL a "
            "cross-encoder rescores the first --rerank-k results of every query (a request may "
            "send rerank=false, or a smaller rerank_k)."
        ),
    )
    p.add_argument("index_dir", metavar="INDEX_DIR", help="an index directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes, each with its own model and index (default: 1)",
    )
    options.add_deprecated_alias(p, "--workers", "--processes", dest="processes", type=int)
    options.add_device(p, "device of the query encoder: auto (cuda when available, else cpu), "
                       "cpu, cuda, ...")  # fmt: skip
    options.add_query_draft(p)
    options.add_runtime(p)
    p.add_argument("--max-k", type=int, default=100, help="most results per query (default: 100)")
    p.add_argument(
        "--max-query-chars", type=int, default=512, help="longest text query (default: 512)"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest upload in MiB (default: 10)"
    )
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="encode each query on its own instead of micro-batching concurrent ones",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a query waits for others to share an encoder call (default: 5)",
    )
    p.add_argument(
        "--max-batch", type=int, default=64, help="most queries per encoder call (default: 64)"
    )
    p.add_argument(
        "--allow-writes",
        action="store_true",
        help="accept POST /api/items (adds an image) from clients that send the token",
    )
    p.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="bearer token for writes (or set XMR_SERVE_TOKEN, which keeps it out of `ps`)",
    )
    p.add_argument(
        "--upload-dir",
        default=None,
        help="where added images are kept (default: INDEX_DIR.uploads)",
    )
    p.add_argument(
        "--show-model-path",
        action="store_true",
        help="show clients the models' full specs (a local model's absolute path); by default "
        "a local model is named by its directory name and a short weights fingerprint",
    )
    p.add_argument(
        "--attribute-names",
        default=None,
        metavar="FILE",
        help="what each position of a 0/1 attribute vector means (Track2 pedestrians), so "
        "results show attribute names: a JSON list, a JSON object with a 'pedestrian_vector' "
        "list (the synth.json of `xmr data synth`), or one name per line",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="uvicorn's log level (default: info)",
    )
    from xmr.cli.rerank_options import add_rerank_arguments

    add_rerank_arguments(
        p,
        k_help="how many first-stage results the cross-encoder rescores; a request may ask for "
        "fewer (rerank_k) or none (rerank=false) (default: %(default)s)",
    )
    from xmr.cli.text_options import add_text_arguments

    # ?mode=dense|bm25|hybrid per request; these say what hybrid means and where BM25 is.
    add_text_arguments(p, search=True, mode=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        import uvicorn
    except ImportError:
        raise XmrError("xmr serve needs the serve extra: pip install 'xmr[serve]'") from None

    index_dir = Path(args.index_dir)
    if not (index_dir / "manifest.json").is_file():
        raise XmrError(
            f"{index_dir}: not an index directory (no manifest.json); see `xmr index build`"
        )
    if args.processes < 1:
        raise XmrError("--processes must be at least 1")
    from xmr.cli.rerank_options import check_rerank_arguments

    check_rerank_arguments(args)
    if args.allow_writes and not (args.token or token_from_env()):
        raise XmrError("--allow-writes needs a token (--token T or XMR_SERVE_TOKEN)")
    attribute_names = None
    if args.attribute_names:
        attribute_names = read_attribute_names(args.attribute_names)
    if not 0 <= args.port <= 65535:
        raise XmrError(f"--port must be between 0 and 65535, not {args.port}")
    check_listen_address(args.host, args.port)  # before the model loads, not after
    settings = ServeSettings(
        max_k=args.max_k,
        max_query_chars=args.max_query_chars,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        batching=not args.no_batching,
        batch_wait_ms=args.batch_wait_ms,
        max_batch=args.max_batch,
        device=args.device,
        allow_writes=args.allow_writes,
        token=args.token or token_from_env(),
        upload_dir=args.upload_dir,
        rerank=args.rerank,
        rerank_k=args.rerank_k,
        rerank_mode=args.rerank_mode,
        rerank_alpha=args.rerank_alpha,
        rerank_batch_size=args.rerank_batch_size,
        show_model_path=args.show_model_path,
        attribute_names=attribute_names,
        draft=args.draft,
        runtime=args.runtime,
        **_text_settings(args),
    )
    if settings.allow_writes and args.processes > 1:
        raise XmrError("--allow-writes needs --processes 1 (each process holds its own index copy)")
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback:
        print(
            f"xmr serve: listening on {args.host}, reachable from other machines", file=sys.stderr
        )
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    if args.processes == 1:
        app = create_app(index_dir, settings)
        info = app.state.service.info()
        print(
            f"xmr serve: {info['size']} items, model {info.get('model')}, index "
            f"{info.get('index_type')}; page {url}  API docs {url}docs",
            file=sys.stderr,
        )
        rerank = info.get("rerank")
        if rerank:
            print(_describe_rerank(rerank, settings), file=sys.stderr)
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            http=json_error_protocol(),
        )
        return 0
    # Several processes: each imports the app factory and reads its settings from the environment.
    os.environ[INDEX_ENV] = str(index_dir.resolve())
    os.environ[SETTINGS_ENV] = settings.to_env()
    print(f"xmr serve: {args.processes} processes; page {url}  API docs {url}docs", file=sys.stderr)
    uvicorn.run(
        "xmr.serve:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.processes,
        log_level=args.log_level,
        http=json_error_protocol(),
    )
    return 0


def _describe_rerank(rerank: dict, settings) -> str:
    line = (
        f"xmr serve: reranking the top {settings.rerank_k} with {rerank['model']} "
        f"({settings.rerank_mode})"
    )
    for kind in ("text", "image"):
        why = rerank.get(f"{kind}_queries_reason")
        if why:
            line += f"; {why}"
    return line


def _text_settings(args) -> dict:
    """``--bm25-index`` / ``--hybrid`` / ``--hybrid-weights`` / ``--rrf-k`` as settings."""
    from xmr.cli.text_options import searcher_options

    options = searcher_options(args)
    out = {"bm25_index": options.get("bm25_index"), "hybrid": options.get("hybrid", "rrf")}
    if "hybrid_weights" in options:
        out["hybrid_weights"] = tuple(options["hybrid_weights"])
    if "rrf_k" in options:
        out["rrf_k"] = options["rrf_k"]
    return out
