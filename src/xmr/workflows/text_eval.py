"""Text retrieval jobs: evaluate / predict with ``bm25``, a dense text model, or both fused
(hybrid), and seed 003's and seed 001's question side by side (:func:`compare_retrievers`).

Every job makes *runs* (query id -> ranked ``(item id, score)``) and scores them with
:func:`xmr.eval.text_retrieval.evaluate_text_run`, so all numbers of one call are computed the
same way on the same queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.readers import load_dataset
from xmr.data.records import document_text
from xmr.errors import XmrError
from xmr.eval.embedded import embed_split, embed_split_fused, item_kind, rank_embedded
from xmr.eval.mteb import MTEB_K_VALUES
from xmr.eval.submission import write_submission
from xmr.eval.text_retrieval import bm25_run, evaluate_text_run, fuse_runs, run_depth
from xmr.index.bm25_index import is_bm25_spec
from xmr.io.atomic import check_output_file

COMPARE_COLUMNS = (
    "R@1", "R@5", "R@10", "MeanRecall", "ndcg_at_10", "mrr_at_10", "recall_at_10", "map_at_10",
)  # fmt: skip


def _encoder(model, device, precision):
    if isinstance(model, str):
        from xmr.models import create_encoder

        return create_encoder(model, device=device, precision=precision)
    return model


def dense_caption_run(encoder, split, depth: int, *, batch_size: int = 64, device=None) -> dict:
    """A dense text model over the items' texts (captions joined; ``encode_documents`` where
    the model has a document prompt), searched with the query texts."""
    from xmr.eval.ranking import topk_from_embeddings

    items = [it for it in split.items.values() if it.captions]
    if not items:
        raise XmrError(f"split '{split.name}' has no item with a caption or text")
    encode_docs = getattr(encoder, "encode_documents", encoder.encode_texts)
    docs = np.asarray(
        encode_docs([document_text(it.captions) for it in items], batch_size=batch_size),
        dtype=np.float32,
    )
    qids = list(split.queries)
    queries = np.asarray(
        encoder.encode_texts([split.queries[q].text for q in qids], batch_size=batch_size),
        dtype=np.float32,
    )
    index, scores = topk_from_embeddings(queries, docs, min(depth, len(items)), device=device)
    return {
        q: [(items[j].id, float(s)) for j, s in zip(index[n], scores[n], strict=True)]
        for n, q in enumerate(qids)
    }


def text_runs(
    model: Any,
    split: Any,
    *,
    depth: int,
    bm25: str | None = None,
    hybrid: str | None = None,
    hybrid_weights: Sequence[float] | None = None,
    rrf_k: int | None = None,
    device: Any = None,
    precision: str = "fp32",
    batch_size: int = 64,
) -> dict[str, dict]:
    """The runs one text evaluation scores: ``{"": run}`` for one retriever, or for
    ``hybrid`` the fused run under ``""`` beside ``dense/`` and ``bm25/``."""
    if is_bm25_spec(model):
        if hybrid:
            raise XmrError("hybrid fuses a dense model with BM25: give model= a dense model")
        return {"": bm25_run(split, model, depth=depth)}
    encoder = _encoder(model, device, precision)
    dense = dense_caption_run(encoder, split, depth, batch_size=batch_size, device=device)
    if not hybrid:
        return {"": dense}
    lexical = bm25_run(split, bm25 or "bm25", depth=depth)
    fused = fuse_runs([dense, lexical], mode=hybrid, weights=hybrid_weights, rrf_k=rrf_k)
    return {"": fused, "dense/": dense, "bm25/": lexical}


def rerank_run(
    run: dict,
    split: Any,
    cross_encoder: Any,
    *,
    rerank_k: int = 16,
    mode: str = "itm",
    alpha: float = 1.0,
    batch_size: int = 32,
) -> dict[str, list[tuple[str, float]]]:
    """Each query's top ``rerank_k`` rescored by a cross-encoder (``ce:`` reads the items'
    texts), the rest after them (see :mod:`xmr.rerank`)."""
    from xmr.rerank import dataset_lookup, rerank_many

    qids = list(run)
    rows = rerank_many(
        [split.queries[q].text for q in qids],
        [[{"id": d, "score": s} for d, s in run[q]] for q in qids],
        cross_encoder,
        lookup=dataset_lookup(split, side="image"),
        k=rerank_k,
        mode=mode,
        alpha=alpha,
        batch_size=batch_size,
    )
    return {q: [(r["id"], r["score"]) for r in row] for q, row in zip(qids, rows, strict=True)}


def is_text_job(model: Any, split: Any, hybrid: str | None = None) -> bool:
    """Text -> text: a BM25 model, a hybrid run, or a corpus whose items have no image."""
    return is_bm25_spec(model) or bool(hybrid) or item_kind(split) == "captions"


def evaluate_text_model(
    model: Any,
    data: Any,
    *,
    split: str | None = None,
    format: str | None = None,
    k: int = 10,
    k_values: Sequence[int] = MTEB_K_VALUES,
    bm25: str | None = None,
    hybrid: str | None = None,
    hybrid_weights: Sequence[float] | None = None,
    rrf_k: int | None = None,
    device: Any = None,
    precision: str = "fp32",
    batch_size: int = 64,
    skip_empty: bool = False,
    rerank: Any = None,
    rerank_options: dict[str, Any] | None = None,
    rankings_out: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, float]:
    """``xmr evaluate --model bm25|st:...|<any text model> [--hybrid rrf]`` on a text corpus or
    a data set's captions: ``t2t/`` MTEB metrics and xmr's R@K / MeanRecall (see
    :mod:`xmr.eval.text_retrieval`); with ``hybrid``, also ``dense/t2t/...`` and ``bm25/t2t/...``.
    ``rerank`` (a cross-encoder or spec, ``ce:...``) rescores the top ``rerank_k`` of
    ``rerank_options``; the first stage is then reported as ``first_stage/t2t/...``.
    ``rankings_out`` (a dict) receives each run's rankings as a report draws them:
    ``t2t``, ``first_stage/t2t``, ``dense/t2t``... -> query id -> ranked item ids."""
    dataset = data if hasattr(data, "splits") else load_dataset(data, format, split)
    chosen = dataset.split(split, need_relevance=True)
    depth = run_depth(chosen, k_values, k)
    runs = text_runs(
        model, chosen, depth=depth, bm25=bm25, hybrid=hybrid, hybrid_weights=hybrid_weights,
        rrf_k=rrf_k, device=device, precision=precision, batch_size=batch_size,
    )  # fmt: skip
    if rerank is not None:
        runs["first_stage/"] = runs[""]
        runs[""] = rerank_run(runs[""], chosen, rerank, **(rerank_options or {}))
    out: dict[str, float] = {}
    for prefix, run in runs.items():
        out |= evaluate_text_run(
            run, chosen, k=k, k_values=k_values, skip_empty=skip_empty, prefix=prefix
        )
        if rankings_out is not None:
            rankings_out[f"{prefix}t2t"] = {q: [i for i, _ in row] for q, row in run.items()}
    return out


def predict_text(
    model: Any,
    data: Any,
    out: str | Path,
    *,
    split: str | None = None,
    format: str | None = None,
    submission_format: str = "trec",
    k: int = 10,
    bm25: str | None = None,
    hybrid: str | None = None,
    hybrid_weights: Sequence[float] | None = None,
    rrf_k: int | None = None,
    device: Any = None,
    precision: str = "fp32",
    batch_size: int = 64,
    rerank: Any = None,
    rerank_options: dict[str, Any] | None = None,
) -> Path:
    """``xmr predict`` for text retrievers: each query's top ``k`` written as a validated
    submission (TREC by default, for trec_eval). A query BM25 finds fewer than ``k`` documents
    for is padded with score-0 items (:func:`pad_run`), so the file has every query."""
    check_output_file(out)
    dataset = data if hasattr(data, "splits") else load_dataset(data, format, split)
    if split is None and "test" in dataset.splits:
        split = "test"
    chosen = dataset.split(split)
    rerank_k = int((rerank_options or {}).get("rerank_k", 16)) if rerank is not None else 0
    runs = text_runs(
        model, chosen, depth=min(max(k, rerank_k), len(chosen.items)), bm25=bm25, hybrid=hybrid,
        hybrid_weights=hybrid_weights, rrf_k=rrf_k, device=device, precision=precision,
        batch_size=batch_size,
    )  # fmt: skip
    run = runs[""]
    if rerank is not None:
        run = rerank_run(run, chosen, rerank, **(rerank_options or {}))
    return write_submission(out, pad_run(run, chosen, k), chosen, kind=submission_format, k=k)


def pad_run(run: dict, split: Any, k: int) -> dict[str, list[tuple[str, float]]]:
    """Each query's list filled up to ``k`` with score-0 items in the split's order (BM25 returns
    only documents sharing a token with the query; every submission format, TREC included as
    xmr validates it, needs each query present, and MUGE files exactly ``k`` ids)."""
    k = min(k, len(split.items))
    out = {}
    for qid in split.queries:
        row = list(run.get(qid, ()))[:k]
        if len(row) < k:
            have = {d for d, _ in row}
            floor = min([0.0, *(s for _, s in row)])
            row += [(i, floor) for i in split.items if i not in have][: k - len(row)]
        out[qid] = row
    return out


def compare_retrievers(
    data: Any,
    *,
    image_model: Any = None,
    text_model: Any = None,
    bm25: str = "bm25",
    fusion_weight: float = 0.5,
    hybrid: str = "rrf",
    split: str | None = None,
    format: str | None = None,
    k: int = 10,
    device: Any = None,
    precision: str = "fp32",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Does the image, the caption, or both find the item? On the same queries of one split:

    * ``image``: the image model, query text -> item image (seed 001's first-stage question);
    * ``caption-bm25``: BM25 over the item captions (seed 003's text-retrieval question);
    * ``caption-dense``: ``text_model`` (default: the image model's text tower) over captions;
    * ``fused``: the image model's fused image+caption item vectors (weight ``fusion_weight``);
    * ``hybrid``: the image run and the caption-BM25 run fused by ``hybrid`` (RRF by default).

    Returns ``{"rows": {name: {metric: value}}, "columns": [...], "n_queries", "split"}``:
    every row's metrics (``COMPARE_COLUMNS`` and the rest) from
    :func:`~xmr.eval.text_retrieval.evaluate_text_run` of its run, so the numbers compare.
    """
    dataset = data if hasattr(data, "splits") else load_dataset(data, format, split)
    chosen = dataset.split(split, need_relevance=True)
    depth = run_depth(chosen, (100,), k)
    runs: dict[str, dict] = {}
    encoder = _encoder(image_model, device, precision) if image_model is not None else None
    if encoder is not None and item_kind(chosen) == "images":
        emb = embed_split(encoder, chosen, batch_size=batch_size, progress=False)
        runs["image"] = rank_embedded(emb, depth, device=device)
    runs["caption-bm25"] = bm25_run(chosen, bm25, depth=depth)
    text_encoder = _encoder(text_model, device, precision) if text_model is not None else encoder
    if text_encoder is not None:
        runs["caption-dense"] = dense_caption_run(
            text_encoder, chosen, depth, batch_size=batch_size, device=device
        )
    if encoder is not None and "image" in runs:
        fused = embed_split_fused(encoder, chosen, fusion_weight, batch_size=batch_size)
        runs["fused"] = rank_embedded(fused, depth, device=device)
        runs["hybrid"] = fuse_runs([runs["image"], runs["caption-bm25"]], mode=hybrid)
    rows = {}
    for name, run in runs.items():
        metrics = evaluate_text_run(run, chosen, k=k, k_values=(1, 3, 5, 10, 20, 100))
        rows[name] = {key.split("/", 1)[1]: value for key, value in metrics.items()}
    return {
        "split": chosen.name,
        "n_queries": sum(1 for q in chosen.relevance if q in chosen.queries),
        "columns": list(COMPARE_COLUMNS),
        "retrievers": {
            "image": getattr(encoder, "spec", None),
            "text": getattr(text_encoder, "spec", None),
            "bm25": bm25,
            "fusion_weight": fusion_weight,
            "hybrid": hybrid,
        },
        "rows": rows,
    }


def format_comparison(result: dict[str, Any]) -> str:
    """One table: a row per retriever, the comparison columns as percentages."""
    cols = result["columns"]
    width = max(len(n) for n in result["rows"]) if result["rows"] else 8
    lines = [
        f"split {result['split']}, {result['n_queries']} queries",
        f"{'retriever':<{width}}  " + "  ".join(f"{c:>12}" for c in cols),
    ]
    for name, metrics in result["rows"].items():
        cells = "  ".join(f"{100 * metrics.get(c, float('nan')):>12.2f}" for c in cols)
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)
