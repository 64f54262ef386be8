"""``xmr evaluate`` as functions: score a model on a data set split (:func:`evaluate_model`) or a
prediction file against it (:func:`evaluate_prediction_file`).

A model is scored by embedding the split with the bi-encoder
(:func:`xmr.eval.embedded.embed_split`, the resumable pipeline of ``xmr encode``) and ranking
exactly; optionally a cross-encoder reranks each query's first-stage top ``rerank_k`` (the
reranked numbers replace the first stage's keys, which stay beside them as ``first_stage/...``),
and fused image+caption items are scored beside image-only and caption-only ones
(``image/``, ``caption/``, ``fused/`` keys). Every option of the command is a parameter here;
the command only parses, calls and prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.eval.embedded import (
    SplitEmbeddings,
    default_directions,
    evaluate_embedded,
    rank_embedded,
)
from xmr.eval.evaluate import (
    evaluate_predictions,
    per_query_rows,
    recall_ks,
    write_per_query_csv,
)
from xmr.eval.fused import evaluate_fused, load_gate
from xmr.eval.metrics import hits_from_rankings
from xmr.eval.reranked import evaluate_reranked
from xmr.fusion import DEFAULT_TUNE_METRIC
from xmr.io.atomic import check_output_file
from xmr.rerank import DEFAULT_RERANK_K
from xmr.workflows.evaluation_result import EvaluationResult
from xmr.workflows.job_inputs import (
    BLIP2_FUSED,
    check_k,
    check_rerank_options,
    embed,
    fusion_value,
    load_encoder,
    load_reranker,
    read_data,
)
from xmr.workflows.report.sources import embedded_rankings, model_fingerprint, predictions_rankings
from xmr.workflows.text_eval import evaluate_text_model, is_text_job

__all__ = ["EvaluationResult", "evaluate_model", "evaluate_prediction_file", "fused_metrics"]


# --- the evaluations ------------------------------------------------------------------------------


def evaluate_model(
    model: Any,
    data: Any,
    *,
    split: str | None = None,
    format: str | None = None,
    directions: Sequence[str] | str | None = None,
    k: int = 10,
    depth: int | str | None = None,
    per_query: str | Path | None = None,
    emb_dir: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: Any = None,
    precision: str = "fp32",
    progress: bool = True,
    rerank: Any = None,
    rerank_k: int = DEFAULT_RERANK_K,
    rerank_mode: str = "itm",
    rerank_alpha: float = 1.0,
    rerank_batch_size: int = 32,
    fused: Any = None,
    tune_split: str | None = None,
    tune_metric: str = DEFAULT_TUNE_METRIC,
    gate: Any = None,
    skip_empty: bool = False,
    skip_bad: bool = False,
    draft: bool = False,
    runtime: str = "eager",
    image_backend: str | None = None,
    text: Mapping[str, Any] | None = None,
    keep_rankings: bool = False,
) -> EvaluationResult:
    """Score a bi-encoder on a split: embed it, rank exactly, compute the evaluator's metrics.

    Args:
        model: an encoder spec (``hf:DIR``, ``open_clip:...``, a directory) or an encoder.
        data: a data set path or a loaded :class:`~xmr.data.dataset.RetrievalDataset`.
        split: the split to score (default: the one with relevance).
        format: the data set format (default: detected).
        directions: ``t2i``, ``i2t`` or both (a sequence or ``"t2i,i2t"``; default: both when
            items are images, else ``t2i``).
        k: the cut-off (ids per query; the K of mAP/nDCG/P; R@1/5/10 up to K and R@K).
        depth: how deep each ranking goes for MRR / MeanRank / MedianRank / NotFound: default
            ``k``; 0 or ``"all"`` ranks every item.
        per_query: write the first-stage text->image per-query rows there as CSV (checked
            before any work).
        emb_dir: keep the embeddings there (a killed run resumes, a re-run reuses them);
            default: a temporary directory.
        batch_size, workers: inputs per forward pass; image decoding processes.
        device, precision: where and how the models run (``None``/``"auto"``: cuda when
            available).
        progress: show progress bars (on stderr).
        rerank: a cross-encoder spec or instance that rescores each query's top ``rerank_k``
            (``rerank_mode`` ``itm`` or ``itm+sim`` with weight ``rerank_alpha``,
            ``rerank_batch_size`` pairs per forward pass).
        fused: also score fused image+caption items: a weight in [0, 1], ``"tune"`` (grid
            search on ``tune_split`` for ``tune_metric``), a learned fusion directory, or
            ``"blip2"`` (image, caption, weighted w=0.5 and BLIP-2's multimodal items; a BLIP-2
            model adds its multimodal column to every fused table).
        tune_split: the split to tune the fusion weight on (default: ``train`` when it has
            relevance, else the evaluated split, with a warning).
        tune_metric: the metric tuning maximises.
        gate: a learned fusion directory (``xmr train --fused``) scored as its own ``gated``
            column beside ``fused``'s (default weight 0.5 when ``fused`` is None), so
            ``fused="blip2", gate=DIR`` is the whole table: image, caption, weighted, gated,
            multimodal.
        skip_empty: LENIENT, not the official numbers: leave queries whose ground truth lists
            no relevant item out of every mean (the official scorers count each as 0; the
            result then carries ``n_empty_skipped`` and a warning says so).
        skip_bad: skip malformed records of the data set (counted in the embeddings manifest
            and in a warning) instead of stopping at the first.
        draft: decode JPEGs in draft mode (faster on big photos, not the reference pixels;
            recorded, and never mixed with fully decoded embeddings in ``emb_dir``).
        image_backend: "pil" or "torchvision": whose pixels the image preprocessing
            reproduces (see :func:`xmr.models.create_encoder`); None keeps the model's.
        runtime: the text tower's runtime, "eager" or "onnx" (see
            :func:`xmr.models.create_encoder`; the same embeddings within 1e-5).
        text: text retrieval options (``bm25``, ``hybrid``, ``hybrid_weights``, ``rrf_k``,
            ``k_values``). A text -> text job (``model="bm25..."``, ``st:...``, a ``hybrid``
            here, or a corpus whose items have no image, such as BEIR) is scored by
            :func:`xmr.workflows.text_eval.evaluate_text_model` with MTEB's metrics beside
            R@K, as ``t2t/`` keys (``per_query``, ``fused``, ``depth`` and ``emb_dir`` do not
            apply to it).
        keep_rankings: also return the rankings, the split and the model's fingerprint on the
            result (what :func:`xmr.workflows.report.build_evaluation_report` draws).

    Returns:
        an :class:`EvaluationResult`.
    """
    check_k(k)
    depth = _depth(depth)
    directions = _directions(directions)
    if rerank is not None:
        check_rerank_options(rerank_k, rerank_mode, rerank_batch_size)
    fused = fusion_value(fused, allow_tune=True) if fused is not None else None
    if gate is not None:
        gate = load_gate(gate)  # a bad gate is an error before the encoding, not after it
    if per_query is not None:
        check_output_file(per_query)  # before the work, not after it
    tuning = isinstance(fused, str) and fused == "tune"
    # Tuning a fusion weight needs its own split (train by default), so read them all then.
    warnings: list[str] = []
    dataset = read_data(data, format, None if tuning else split, skip_bad, warnings)
    chosen = dataset.split(split, need_relevance=True)
    if not chosen.has_relevance:
        raise XmrError(f"{dataset.root}: split '{chosen.name}' has no relevance to score against")
    if is_text_job(model, chosen, (text or {}).get("hybrid")):
        return _evaluate_text(
            model, dataset, chosen, text, directions=directions, k=k, device=device,
            precision=precision, batch_size=batch_size, skip_empty=skip_empty, rerank=rerank,
            rerank_options={"rerank_k": rerank_k, "mode": rerank_mode, "alpha": rerank_alpha,
                            "batch_size": rerank_batch_size},
            refused={"per_query": per_query, "fused": fused, "gate": gate, "depth": depth,
                     "emb_dir": emb_dir},
            warnings=warnings, keep_rankings=keep_rankings,
        )  # fmt: skip
    if tuning:  # a bad tuning split is an error before the encoding, not after it
        _tune_split(dataset, chosen, tune_split, warnings)
    encoder = load_encoder(model, device, precision, draft, runtime, image_backend)
    if gate is not None:  # another model's gate: an error before the encoding, not after it
        manifest = getattr(encoder, "manifest", None)
        gate.check_model(manifest() if callable(manifest) else None, what="the embeddings")
    emb = embed(encoder, data, dataset, chosen, emb_dir=emb_dir, batch_size=batch_size,
                workers=workers, progress=progress, warnings=warnings)  # fmt: skip
    directions = directions or default_directions(emb)
    metrics = evaluate_embedded(
        emb, directions=directions, k=k, depth=depth, device=device, skip_empty=skip_empty
    )
    rankings: dict | None = None
    if rerank is not None:
        # The reranked numbers replace the first stage's keys; the first stage stays beside them.
        rankings = {} if keep_rankings else None  # both stages, as they were scored
        metrics |= evaluate_reranked(
            chosen, emb.text, emb.items, load_reranker(rerank, device, precision),
            rerank_k=rerank_k, mode=rerank_mode, alpha=rerank_alpha, directions=directions,
            k=k, batch_size=rerank_batch_size, device=device, rankings_out=rankings,
        )  # fmt: skip
    if fused is not None or gate is not None:
        metrics |= fused_metrics(
            encoder, dataset, chosen, fused, tune_split=tune_split, tune_metric=tune_metric, k=k,
            batch_size=batch_size, device=device, skip_empty=skip_empty, workers=workers,
            gate=gate,
        )  # fmt: skip
    rows = path = None
    if per_query is not None:
        rows = _first_stage_rows(emb, k, device, skip_empty)
        path = write_per_query_csv(rows, per_query)
    if skip_empty:
        warnings.append(lenient_warning(metrics))
    result = EvaluationResult(metrics, chosen.name, "model", rows, path, list(emb.failed), warnings)
    if keep_rankings:
        result.rankings = rankings or embedded_rankings(emb, directions, device=device)
        result.split_data = chosen
        result.model_fingerprint = model_fingerprint(emb.model)
    return result


def _evaluate_text(
    model: Any,
    dataset: Any,
    chosen: Any,
    text: Mapping[str, Any] | None,
    *,
    directions: Sequence[str] | None,
    refused: Mapping[str, Any],
    warnings: list[str],
    keep_rankings: bool = False,
    **options: Any,
) -> EvaluationResult:
    """:func:`evaluate_model` for a text -> text job (see its ``text`` parameter)."""
    given = [name for name, value in refused.items() if value is not None]
    if given:
        raise XmrError(f"{given[0]} does not apply to text retrieval (bm25, st:..., hybrid)")
    if directions and set(directions) - {"t2t"}:
        raise XmrError(f"a text retrieval job has the one direction t2t, not {list(directions)}")
    if options.get("rerank") is not None:
        options["rerank"] = load_reranker(
            options["rerank"], options["device"], options["precision"]
        )
    else:
        options.pop("rerank_options")
    rankings: dict | None = {} if keep_rankings else None
    metrics = evaluate_text_model(
        model, dataset, split=chosen.name, rankings_out=rankings, **options, **dict(text or {})
    )
    if options.get("skip_empty"):
        warnings.append(lenient_warning(metrics))
    result = EvaluationResult(metrics, chosen.name, "model", warnings=warnings)
    if keep_rankings:
        result.rankings, result.split_data = rankings, chosen
        result.model_fingerprint = _text_fingerprint(model)
    return result


def _text_fingerprint(model: Any) -> str | None:
    """The fingerprint of a loaded dense text model; None for a spec string (the provenance
    shows the spec) and for BM25, which has no weights."""
    manifest = getattr(model, "manifest", None)
    return model_fingerprint(manifest()) if callable(manifest) else None


def fused_metrics(
    encoder: Any,
    dataset: Any,
    split: Any,
    fused: Any,
    *,
    tune_split: str | None = None,
    tune_metric: str = DEFAULT_TUNE_METRIC,
    k: int = 10,
    batch_size: int | None = None,
    device: Any = None,
    warnings: list[str] | None = None,
    skip_empty: bool = False,
    workers: int = 0,
    gate: Any = None,
) -> dict[str, float]:
    """Image-only, caption-only and fused text->item metrics of ``split`` side by side
    (``{image,caption,fused}/t2i/<metric>``, see :func:`xmr.eval.fused.evaluate_fused`; its
    images are embedded through :func:`xmr.encode.encode_split` with ``workers`` decoding
    processes).

    ``fused`` is a weight in [0, 1], a learned fusion directory (or Fusion), ``"blip2"`` (w=0.5
    and BLIP-2's multimodal items, required), or ``"tune"``:
    grid-search the weight for ``tune_metric`` on the split named ``tune_split`` of ``dataset``
    (default: ``train`` when it has relevance, else ``split`` itself, which appends a warning to
    ``warnings``: the fused numbers are then optimistic); None is the weight 0.5. ``gate``, a
    learned fusion directory, adds its ``gated/`` column."""
    fused = fusion_value(fused, allow_tune=True)
    tune = None
    multimodal = None  # whenever the encoder has it
    if isinstance(fused, str) and fused == "tune":
        tune = _tune_split(dataset, split, tune_split, warnings if warnings is not None else [])
        fused = None
    elif isinstance(fused, str) and fused == BLIP2_FUSED:
        fused, multimodal = None, True  # required: an error without a BLIP-2 encoder
    return evaluate_fused(
        encoder, split, weight=fused, tune_split=tune, metric=tune_metric, ks=recall_ks(k),
        k=k, batch_size=batch_size, device=device, skip_empty=skip_empty, workers=workers,
        multimodal=multimodal, gate=gate,
    )  # fmt: skip


def lenient_warning(metrics: Mapping[str, float]) -> str:
    """What a lenient (``skip_empty``) evaluation must say about its numbers."""
    left_out = sum(int(v) for key, v in metrics.items() if key.endswith("n_empty_skipped"))
    return (
        f"--skip-empty-queries: {left_out} queries with no relevant item are left out of every "
        "mean; these are not the official numbers (the official scorers count such queries as 0)"
    )


def evaluate_prediction_file(
    predictions: str | Path,
    data: Any,
    *,
    split: str | None = None,
    format: str | None = None,
    predictions_format: str | None = None,
    k: int = 10,
    per_query: str | Path | None = None,
    skip_empty: bool = False,
    skip_bad: bool = False,
    keep_rankings: bool = False,
) -> EvaluationResult:
    """Validate a prediction file as the official scorers do and score it.

    Args:
        predictions: a Track2 JSON, MUGE / Chinese-CLIP JSON lines or TREC run file.
        data: a data set path or a loaded RetrievalDataset.
        split: the split to score against (default: the one with relevance).
        format: the data set format (default: detected).
        predictions_format: ``track2``, ``muge``, ``cnclip``, ``cnclip-i2t`` or ``trec``
            (default: detected from the content).
        k: the cut-off; each list must hold exactly ``k`` ids (TREC runs: any number).
        per_query: write the per-query rows there as CSV (checked before any work).
        skip_empty, skip_bad, keep_rankings: as for :func:`evaluate_model`.
    """
    check_k(k)
    if per_query is not None:
        check_output_file(per_query)
    warnings: list[str] = []
    dataset = read_data(data, format, split, skip_bad, warnings)
    chosen = dataset.split(split, need_relevance=True)
    if not chosen.has_relevance:
        raise XmrError(f"{dataset.root}: split '{chosen.name}' has no relevance to score against")
    metrics, rows = evaluate_predictions(
        predictions, chosen, k=k, kind=predictions_format, skip_empty=skip_empty,
        on_warning=warnings.append,
    )  # fmt: skip
    path = write_per_query_csv(rows, per_query) if per_query is not None else None
    if skip_empty:
        warnings.append(lenient_warning(metrics))
    result = EvaluationResult(metrics, chosen.name, "predictions", rows, path, warnings=warnings)
    if keep_rankings:
        result.rankings = predictions_rankings(predictions, chosen, k=k, kind=predictions_format)
        result.split_data = chosen
    return result


def _depth(depth: int | str | None) -> int | None:
    if depth is None or isinstance(depth, int):
        return depth
    if depth == "all":
        return 0
    try:
        return int(depth)
    except ValueError:
        raise XmrError(f"depth takes a number or 'all', not {depth!r}") from None


def _directions(directions: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if isinstance(directions, str):
        directions = directions.split(",")
    if directions is None:
        return None
    out = tuple(d.strip() for d in directions if d.strip())
    return out or None


def _tune_split(dataset: Any, split: Any, name: str | None, warnings: list[str]):
    if name is None:
        train = dataset.splits.get("train")
        name = "train" if train is not None and train.has_relevance else split.name
    if name == split.name:
        warnings.append(
            f"the fusion weight is tuned on the evaluated split '{split.name}'; its fused numbers "
            "are optimistic (tune on another split)"
        )
    return dataset.split(name, need_relevance=True)


def _first_stage_rows(
    emb: SplitEmbeddings, k: int, device: Any, skip_empty: bool = False
) -> list[dict[str, Any]]:
    """Per-query rows of the first-stage text->item ranking, cut at K as a submission is."""
    split = emb.split
    ranked = rank_embedded(emb, min(k, len(split.items)), device=device)
    rankings = {q: [i for i, _ in row] for q, row in ranked.items()}
    table = hits_from_rankings(rankings, split.relevance, skip_empty=skip_empty)
    return per_query_rows(table, k, {q: query.text for q, query in split.queries.items()})
