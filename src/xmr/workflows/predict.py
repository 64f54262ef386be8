"""``xmr predict`` as a function: a model's top-K for every query of a split, optionally reranked
by a cross-encoder or ranked by fused image+caption items, written as a submission file that is
validated as the official scorer would before it replaces the output."""

from __future__ import annotations

import os
import warnings as _warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.eval.embedded import embed_split_fused, embed_split_multimodal, rank_embedded
from xmr.eval.submission import default_submission_format, write_submission
from xmr.io.atomic import check_output_file
from xmr.rerank import DEFAULT_RERANK_K, dataset_lookup, rerank_many
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
from xmr.workflows.text_eval import is_text_job, predict_text


@dataclass(eq=False)
class PredictionResult(os.PathLike):
    """A written submission file. It is also path-like (``open(result)``, ``Path(result)``,
    ``str(result)``), as the path earlier versions returned was.

    Attributes:
        path: the file written.
        out_format: its format (``track2``, ``muge``, ``cnclip`` or ``trec``).
        split: the split predicted.
        queries: how many queries it answers.
        k: ids per query.
        failed_items: items whose image could not be encoded (they rank last).
        reranked: whether a cross-encoder reordered each query's top ``rerank_k``.
        fused: the fusion the items were ranked by (as given), or None.
        warnings: things the caller should tell the user.
        skipped: what reading the data set skipped (``skipped_records``, ``skipped_examples``).
    """

    path: Path
    out_format: str
    split: str
    queries: int
    k: int
    failed_items: list[str] = field(default_factory=list)
    reranked: bool = False
    fused: Any = None
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:  # str() of the result is its path, as for the Path it replaces
        return str(self.path)

    def summary(self) -> dict[str, Any]:
        """The JSON summary ``xmr predict --json`` prints."""
        return {
            "out": str(self.path),
            "submission_format": self.out_format,
            "split": self.split,
            "queries": self.queries,
            "k": self.k,
            "failed_items": len(self.failed_items),
            "reranked": self.reranked,
            "fused": None if self.fused is None else str(self.fused),
            **self.skipped,
        }


def predict(
    model: Any,
    data: Any,
    out: str | Path,
    *,
    split: str | None = None,
    format: str | None = None,
    out_format: str | None = None,
    k: int = 10,
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
    submission_format: str | None = None,
    skip_bad: bool = False,
    draft: bool = False,
    runtime: str = "eager",
    image_backend: str | None = None,
    text: Mapping[str, Any] | None = None,
) -> PredictionResult:
    """Rank every item for every query of a split and write the top ``k`` as a submission.

    Args:
        model: an encoder spec or an encoder.
        data: a data set path or a loaded RetrievalDataset.
        out: the file to write (replaced atomically, after validation).
        split: the split to predict (default: ``test`` when there is one, else the only one;
            relevance is not needed).
        format: the data set format (default: detected).
        out_format: ``track2``, ``muge``, ``cnclip`` or ``trec`` (default: ``track2`` for
            track2 data, ``cnclip`` for MUGE data named the Chinese-CLIP way, ``trec`` for
            text corpora (beir), else ``muge``).
        k: ids per query (a split with fewer items is an error, except for TREC runs).
        emb_dir, batch_size, workers, device, precision, progress: as for
            :func:`xmr.workflows.evaluate.evaluate_model`.
        rerank, rerank_k, rerank_mode, rerank_alpha, rerank_batch_size: a cross-encoder that
            reorders each query's top ``rerank_k`` (the first stage ranks ``max(k,
            rerank_k)``).
        fused: rank items by their fused image+caption vector: a weight in [0, 1] or a learned
            fusion directory (the images through the encode pipeline with ``workers``; the
            mean of all captions is not what an embeddings directory stores, so ``emb_dir`` is
            not used); or ``"blip2"``: BLIP-2's multimodal items (image + first caption, K
            vectors, max-sim), as ``evaluate(..., fused="blip2")`` ranks them.
        submission_format: the former name of ``out_format`` (deprecated).
        skip_bad: skip malformed records of the data set (counted in a warning and in the
            embeddings manifest) instead of stopping at the first.
        draft: decode JPEGs in draft mode (see :func:`xmr.workflows.evaluate.evaluate_model`).
        runtime: the text tower's runtime, "eager" or "onnx" (likewise).
        image_backend: "pil" or "torchvision" (likewise).
        text: text retrieval options (``bm25``, ``hybrid``, ``hybrid_weights``, ``rrf_k``). A
            text -> text job (``bm25...``, ``st:...``, a ``hybrid``, a corpus without images) is
            written by :func:`xmr.workflows.text_eval.predict_text`, a TREC run by default,
            padded to ``k`` (``fused`` does not apply to it).

    Returns:
        a :class:`PredictionResult`.
    """
    if submission_format is not None:
        _warnings.warn(
            "predict(submission_format=...) is deprecated; use out_format=",
            DeprecationWarning,
            stacklevel=2,
        )
        out_format = out_format or submission_format
    check_k(k)
    if rerank is not None:
        check_rerank_options(rerank_k, rerank_mode, rerank_batch_size)
    multimodal = fused == BLIP2_FUSED  # BLIP-2's own image+caption items
    fusion = fusion_value(fused, allow_tune=False) if fused is not None and not multimodal else None
    check_output_file(out)  # before the work, not after it
    warnings: list[str] = []
    dataset = read_data(data, format, split, skip_bad, warnings)
    if split is None and "test" in dataset.splits:
        split = "test"
    chosen = dataset.split(split)
    text = {key: v for key, v in (text or {}).items() if key != "k_values"}
    if is_text_job(model, chosen, text.get("hybrid")):
        if fused is not None:
            raise XmrError("fused does not apply to text retrieval (bm25, st:..., hybrid)")
        kind = out_format or "trec"
        cross = load_reranker(rerank, device, precision) if rerank is not None else None
        path = predict_text(
            model, dataset, out, split=chosen.name, submission_format=kind, k=k, device=device,
            precision=precision, batch_size=batch_size, rerank=cross,
            rerank_options={"rerank_k": rerank_k, "mode": rerank_mode, "alpha": rerank_alpha,
                            "batch_size": rerank_batch_size},
            **text,
        )  # fmt: skip
        return PredictionResult(Path(path), kind, chosen.name, len(chosen.queries), k,
                                reranked=rerank is not None, warnings=warnings)  # fmt: skip
    kind = out_format or default_submission_format(dataset, chosen)
    encoder = load_encoder(model, device, precision, draft, runtime, image_backend)
    if multimodal:
        emb = embed_split_multimodal(encoder, chosen, batch_size=batch_size, workers=workers)
    elif fusion is not None:
        emb = embed_split_fused(encoder, chosen, fusion, batch_size=batch_size, workers=workers)
    else:
        emb = embed(encoder, data, dataset, chosen, emb_dir=emb_dir, batch_size=batch_size,
                    workers=workers, progress=progress, warnings=warnings)  # fmt: skip
    depth = max(k, rerank_k) if rerank is not None else k
    ranked = rank_embedded(emb, min(depth, len(chosen.items)), device=device)
    if rerank is not None:
        ranked = _reranked(chosen, ranked, load_reranker(rerank, device, precision),
                           rerank_k, rerank_mode, rerank_alpha, rerank_batch_size)  # fmt: skip
    path = write_submission(out, ranked, chosen, kind=kind, k=k, on_warning=warnings.append)
    return PredictionResult(
        path, kind, chosen.name, len(ranked), k, list(emb.failed), rerank is not None, fused,
        warnings, dataset.skip_record() if hasattr(dataset, "skip_record") else {},
    )  # fmt: skip


def _reranked(split, ranked: dict, cross_encoder, k: int, mode: str, alpha: float, batch: int):
    qids = list(ranked)
    rows = rerank_many(
        [split.queries[q].text for q in qids],
        [[{"id": i, "score": s} for i, s in ranked[q]] for q in qids],
        cross_encoder,
        lookup=dataset_lookup(split, side="image"),
        k=k,
        mode=mode,
        alpha=alpha,
        batch_size=batch,
    )
    return {q: [(r["id"], r["score"]) for r in row] for q, row in zip(qids, rows, strict=True)}
