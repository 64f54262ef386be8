"""A split embedded by a bi-encoder, ranked exactly and scored: the core of ``xmr evaluate
--model``, ``xmr predict`` and training validation (the end-to-end jobs are in
:mod:`xmr.workflows.evaluate`).

Embedding goes through :func:`xmr.encode.encode_split`, the same resumable, parallel pipeline as
``xmr encode``: with ``emb_dir`` the shards are kept and a killed run resumes; without it they go
to a temporary directory. Ranking is exact (chunked inner products, :mod:`xmr.eval.ranking`), so
the numbers are those of a Flat index, with no approximation error in them.

An item whose image could not be decoded keeps a row of NaN: it ranks below every decodable item
for every text (it is never "found"), and it is counted in ``n_failed_items``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmr.encode import encode_split, load_embeddings
from xmr.errors import XmrError
from xmr.fusion import encode_items, load_fusion

log = logging.getLogger(__name__)


@dataclass
class SplitEmbeddings:
    """A split's embeddings aligned with its dicts: ``text`` rows follow ``split.queries``,
    ``items`` rows follow ``split.items`` (NaN rows for items that failed to encode); ``items``
    is ``(n, K, dim)`` for a multi-vector encoder, and every ranking is then by max-sim."""

    split: Any
    text: np.ndarray
    items: np.ndarray
    item_kind: str  # "images", or "captions" for a corpus without images (BEIR)
    failed: list[str] = field(default_factory=list)
    model: dict[str, Any] | None = None

    @property
    def query_ids(self) -> list[str]:
        return list(self.split.queries)

    @property
    def item_ids(self) -> list[str]:
        return list(self.split.items)


def item_kind(split) -> str:
    """What represents an item: its image, or its first caption when no item has an image."""
    return "images" if any(it.image is not None for it in split.items.values()) else "captions"


def _aligned(emb, ids: Sequence[str], dim: int) -> tuple[np.ndarray, list[str]]:
    # (n, dim), or (n, K, dim) for multi-vector items: ranked by max-sim downstream
    rows = np.full((len(ids), *emb.vectors.shape[1:]), np.nan, dtype=np.float32)
    position = {i: n for n, i in enumerate(ids)}
    where = [position[i] for i in emb.ids]
    rows[where] = emb.vectors
    found = set(emb.ids)
    return rows, [i for i in ids if i not in found]


def embed_split(
    encoder,
    split,
    *,
    emb_dir: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    draft: bool | None = None,
) -> SplitEmbeddings:
    """Encode ``split``'s query texts and items with ``encoder`` (see the module docstring).
    ``draft``: JPEG draft decoding (see :func:`xmr.encode.encode_split`; None: the encoder's
    ``preprocess.draft``, off unless loaded with ``draft=True``)."""

    if not split.queries:
        raise XmrError(f"split '{split.name}' has no queries to evaluate or predict")
    if not split.items:
        raise XmrError(f"split '{split.name}' has no items to rank")
    kind = item_kind(split)

    def run(directory: Path) -> SplitEmbeddings:
        encode_split(
            encoder,
            split,
            directory,
            batch_size=batch_size,
            workers=workers,
            kinds=(kind, "texts"),
            overwrite=overwrite,
            progress=progress,
            source=source,
            draft=draft,
            redo_hint="use another embeddings directory (emb_dir) or delete that one",
        )
        texts = load_embeddings(directory, "texts")
        items = load_embeddings(directory, kind)
        dim = int(texts.manifest["dim"])
        text_rows, missing_texts = _aligned(texts, list(split.queries), dim)
        if missing_texts:  # texts never fail to encode; a mismatch means a foreign directory
            raise XmrError(f"{directory}: no text embedding for query {missing_texts[0]}")
        item_rows, failed = _aligned(items, list(split.items), dim)
        if kind == "captions":
            failed = []  # items without a caption are not failures, just unrepresented
        return SplitEmbeddings(split, text_rows, item_rows, kind, failed, texts.model)

    if emb_dir is not None:
        return run(Path(emb_dir))
    with tempfile.TemporaryDirectory(prefix="xmr-emb-") as tmp:
        return run(Path(tmp))


def default_directions(emb: SplitEmbeddings) -> tuple[str, ...]:
    """t2i always; i2t too when items are images (image->text over a text corpus is not a task)."""
    return ("t2i", "i2t") if emb.item_kind == "images" else ("t2i",)


def evaluate_embedded(
    emb: SplitEmbeddings,
    *,
    directions: Sequence[str] | None = None,
    k: int = 10,
    depth: int | None = None,
    device: Any = None,
    skip_empty: bool = False,
) -> dict[str, float]:
    """The evaluator's metrics (``t2i/R@1`` ... and, per direction, per category) of exact
    inner-product retrieval with ``emb``. Items that failed to encode (``emb.failed``) are
    never found by a text, and as image queries they find nothing.

    ``depth`` is how deep each ranking goes, which is how deep MRR, MeanRank, MedianRank and
    NotFound look: default ``k`` (the cut-offs' depth, as a submission is); 0 ranks everything
    (the uncut MRR and first-hit ranks, at the cost of a full sort per query).

    Judged queries with no relevant item score 0, as in the official scorers; ``skip_empty`` is
    the lenient reading that leaves them out (see :mod:`xmr.eval.metrics`)."""
    from xmr.eval.evaluate import evaluate_split, recall_ks

    if not emb.split.has_relevance:
        raise XmrError(f"split '{emb.split.name}' has no relevance to score against")
    directions = tuple(directions or default_directions(emb))
    unknown = [d for d in directions if d not in ("t2i", "i2t")]
    if unknown:
        raise XmrError(f"unknown direction '{unknown[0]}' (t2i or i2t)")
    ks = recall_ks(k)
    if depth is not None and depth < 0:
        raise XmrError(f"depth must be >= 0 (0: rank every item), got {depth}")
    full = max(len(emb.split.items), len(emb.split.queries))
    depth = max(k, depth or full) if depth is not None else None
    metrics: dict[str, float] = {}
    for direction in directions:
        if direction == "i2t" and emb.failed:
            metrics |= _i2t_with_failures(emb, ks, k, depth, device, skip_empty)
        else:  # NaN rows of failed items rank last for every text
            metrics |= evaluate_split(
                emb.split, emb.text, emb.items, directions=(direction,), ks=ks, k=k,
                depth=depth, device=device, skip_empty=skip_empty,
            )  # fmt: skip
    return metrics


def _i2t_with_failures(
    emb: SplitEmbeddings, ks, k: int, depth: int | None, device: Any, skip_empty: bool = False
) -> dict[str, float]:
    """image->text when some images have no embedding: those queries are ranked nothing, so
    they count as misses (never skipped, never credited with hits by tie order)."""
    from xmr.eval.evaluate import evaluate_rankings, split_categories
    from xmr.eval.ranking import topk_from_embeddings

    failed = set(emb.failed)
    item_ids, query_ids = emb.item_ids, emb.query_ids
    rows = np.array([n for n, i in enumerate(item_ids) if i not in failed], dtype=np.int64)
    depth = min(max(k, *ks, depth or 0), len(query_ids))
    index, _ = topk_from_embeddings(emb.items, emb.text, depth, rows=rows, device=device)
    rankings = {i: [] for i in item_ids}
    for n, row in enumerate(rows):
        rankings[item_ids[row]] = [query_ids[j] for j in index[n]]
    return evaluate_rankings(
        rankings,
        emb.split.item_relevance(),
        ks=ks,
        k=k,
        direction="i2t",
        categories=split_categories(emb.split, "i2t"),
        query_ids=item_ids,
        skip_empty=skip_empty,
    )


def rank_embedded(
    emb: SplitEmbeddings,
    k: int,
    *,
    device: Any = None,
) -> dict[str, list[tuple[str, float]]]:
    """Text->item top-``k`` for every query of the split (with or without relevance), as
    ``query id -> [(item id, score), ...]`` best first; items that failed to encode rank last."""
    from xmr.eval.ranking import topk_from_embeddings

    if k < 1:
        raise XmrError(f"k must be at least 1 (got {k})")
    item_ids = emb.item_ids
    if k > len(item_ids):
        raise XmrError(
            f"split '{emb.split.name}' has {len(item_ids)} items, fewer than the {k} "
            "results each query needs"
        )
    index, scores = topk_from_embeddings(emb.text, emb.items, k, device=device)
    return {
        qid: [(item_ids[j], float(s)) for j, s in zip(index[n], scores[n], strict=True)]
        for n, qid in enumerate(emb.query_ids)
    }


def embed_split_fused(
    encoder, split, fusion, *, batch_size: int = 64, workers: int = 0
) -> SplitEmbeddings:
    """Like :func:`embed_split`, with each item represented by its fused image+caption vector
    (``fusion``: a weight, a learned fusion directory or a Fusion; see
    :func:`xmr.fusion.load_fusion`), computed as ``xmr evaluate --fused`` computes it (images
    through :func:`xmr.encode.encode_split` with ``workers`` decoding processes; an item whose
    image cannot be decoded is its caption's vector, and is listed in ``failed``)."""

    fusion = load_fusion(fusion)
    manifest = getattr(encoder, "manifest", None)
    fusion.check_model(manifest() if callable(manifest) else None, what="the model")
    items = encode_items(encoder, split.items, batch_size, workers=workers)
    texts = [q.text for q in split.queries.values()]
    text = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), dtype=np.float32)
    fused = np.asarray(fusion.fuse(items.image, items.caption), dtype=np.float32)
    return SplitEmbeddings(split, text, fused, "fused", list(items.failed), None)


def embed_split_multimodal(
    encoder, split, *, batch_size: int = 64, workers: int = 0
) -> SplitEmbeddings:
    """Like :func:`embed_split_fused`, with each item its BLIP-2 multimodal embedding (the
    encoder's ``encode_items``: image + first caption, K vectors, ranked by max-sim), computed
    as ``xmr evaluate --fused blip2`` computes it (:func:`xmr.fusion.multimodal_embeddings`:
    an item without a caption is its image vectors, one without an image its caption's)."""
    from xmr.encode.multimodal import require_item_encoder

    require_item_encoder(encoder)  # before the images are encoded
    items = encode_items(encoder, split.items, batch_size, workers=workers, multimodal=True)
    texts = [q.text for q in split.queries.values()]
    text = np.asarray(encoder.encode_texts(texts, batch_size=batch_size), dtype=np.float32)
    return SplitEmbeddings(split, text, items.multimodal, "multimodal", list(items.failed), None)
