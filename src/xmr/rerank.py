"""Two-stage retrieval: a cross-encoder rescores the top-K of a fast first stage.

The first stage (a bi-encoder and an index) returns a ranked list of candidates with their
similarity. :func:`rerank` lets a cross-encoder (:mod:`xmr.models.cross_encoders`) read the query
together with each of the first ``k`` candidates and reorders only those ``k``:

* ``mode="itm"`` (mPLUG): ``score = p_match = softmax(itm_logits)[1]``, the ITM head's
  probability of "match" (the number a pair score reports; ranking by it orders pairs by
  ``logit_match - logit_no_match``).
* ``mode="itm+sim"`` (BLIP / BLIP-2 in LAVIS): ``score = itm_logit_match + alpha * similarity``,
  where ``itm_logit_match`` is the raw ITM logit of the "match" class (column 1; for BLIP-2 the
  mean over query tokens) and ``similarity`` the first-stage score (cosine). ``alpha=1`` is
  exactly LAVIS's ``score + topk_sim``.

Candidates after the first ``k`` keep their first-stage order, after the reranked block. Every
result keeps ``first_stage_score``; ``score`` is the ranking score and never increases down the
list: outside the block it is ``first_stage_score - shift``, where ``shift`` is 0 when the block's
lowest score is already above the first unreranked score, and otherwise the smallest shift (plus
1e-6) that puts it below. So a consumer that re-sorts by ``score`` (pytrec_eval does) gets the
same ranking as the list order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.search import SearchResult

RERANK_MODES = ("itm", "itm+sim")
DEFAULT_RERANK_K = 16
_SHIFT_MARGIN = 1e-6


def _as_candidate(c: Any) -> dict[str, Any]:
    if isinstance(c, Mapping):
        out = dict(c)
    elif hasattr(c, "id") and hasattr(c, "score"):
        out = dict(vars(c)) if hasattr(c, "__dict__") else {"id": c.id, "score": c.score}
    elif isinstance(c, tuple | list) and len(c) == 2:
        out = {"id": c[0], "score": c[1]}
    else:
        raise XmrError(f"a rerank candidate needs an id and a score, got {c!r}")
    if "id" not in out or "score" not in out:
        raise XmrError(f"a rerank candidate needs 'id' and 'score', got keys {sorted(out)}")
    out["score"] = float(out["score"])
    return out


def _is_text(query: Any) -> bool:
    return isinstance(query, str)


def _resolver(lookup: Mapping | Callable[[str], Any]) -> Callable[[str], Any]:
    if callable(lookup) and not isinstance(lookup, Mapping):
        return lookup

    def get(item_id: str) -> Any:
        try:
            return lookup[item_id]
        except KeyError:
            raise XmrError(f"rerank: no image or text for candidate id '{item_id}'") from None

    return get


def _item_image(value: Any) -> Any:
    """A PIL image from what a lookup returns: PIL, ImageRef, path, bytes, or an Item."""
    from xmr.models.base import load_image

    image = getattr(value, "image", value) if not isinstance(value, str | bytes) else value
    if image is None:
        raise XmrError(f"rerank: item '{getattr(value, 'id', value)}' has no image")
    return load_image(image)


def _item_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    captions = getattr(value, "captions", None)
    if captions:
        return captions[0]
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return text
    raise XmrError(f"rerank: cannot find a text for candidate {value!r}")


def combine_scores(
    logits: np.ndarray, first_stage: np.ndarray, mode: str, alpha: float = 1.0
) -> np.ndarray:
    """The final score of reranked pairs (see the module docstring for the formulas)."""
    from xmr.models.cross_encoders import match_probability

    if mode == "itm":
        return match_probability(logits).astype(np.float64)
    if mode == "itm+sim":
        return np.asarray(logits, dtype=np.float64)[:, 1] + alpha * np.asarray(
            first_stage, dtype=np.float64
        )
    raise XmrError(f"unknown rerank mode '{mode}' (choose from {', '.join(RERANK_MODES)})")


def rerank(
    query: Any,
    candidates: Sequence[Any],
    cross_encoder: Any,
    *,
    lookup: Mapping | Callable[[str], Any],
    k: int = DEFAULT_RERANK_K,
    mode: str = "itm",
    alpha: float = 1.0,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Rerank the first ``k`` of ``candidates`` for one query with a cross-encoder.

    Args:
        query: a text (``str``: text->image, ``lookup`` gives images) or an image (PIL image,
            ``ImageRef``, ``pathlib.Path`` or bytes: image->text, ``lookup`` gives texts).
        candidates: first-stage results, best first: dicts with ``id`` and ``score`` (or objects
            with those attributes, or ``(id, score)`` pairs).
        cross_encoder: a :class:`~xmr.models.cross_encoders.CrossEncoder` or a spec string.
        lookup: id -> image (PIL, ImageRef, path, bytes or an ``Item``) for text queries, or
            id -> text (or an ``Item``, first caption) for image queries; a mapping or a callable.
        k: how many of the first candidates the cross-encoder rescores.
        mode: "itm" or "itm+sim" (formulas in the module docstring).
        alpha: weight of the first-stage similarity in "itm+sim".
        batch_size: pairs per cross-encoder forward pass.

    Returns:
        New dicts in the final order, each with ``id``, ``score`` (ranking score),
        ``first_stage_score``, ``reranked`` and, for reranked ones, ``match_prob``.
    """
    return rerank_many(
        [query],
        [candidates],
        cross_encoder,
        lookup=lookup,
        k=k,
        mode=mode,
        alpha=alpha,
        batch_size=batch_size,
    )[0]


def rerank_many(
    queries: Sequence[Any],
    candidate_lists: Sequence[Sequence[Any]],
    cross_encoder: Any,
    *,
    lookup: Mapping | Callable[[str], Any],
    k: int = DEFAULT_RERANK_K,
    mode: str = "itm",
    alpha: float = 1.0,
    batch_size: int = 32,
    max_pairs_in_memory: int = 1024,
) -> list[list[dict[str, Any]]]:
    """:func:`rerank` for many queries: pairs of several queries share cross-encoder batches,
    and a candidate that recurs within a chunk is decoded (and, for BLIP, encoded) once."""
    from xmr.models.base import load_image
    from xmr.models.cross_encoders import create_cross_encoder

    if len(queries) != len(candidate_lists):
        raise XmrError(f"rerank: {len(queries)} queries but {len(candidate_lists)} candidate lists")
    if k < 1:
        raise XmrError(f"--rerank-k must be >= 1, got {k}")
    if mode not in RERANK_MODES:
        raise XmrError(f"unknown rerank mode '{mode}' (choose from {', '.join(RERANK_MODES)})")
    if isinstance(cross_encoder, str):
        cross_encoder = create_cross_encoder(cross_encoder)
    resolve = _resolver(lookup)
    lists = [[_as_candidate(c) for c in cands] for cands in candidate_lists]
    results: list[list[dict[str, Any]]] = []

    chunk: list[int] = []
    n_pairs = 0
    for qi, cands in enumerate(lists):
        chunk.append(qi)
        n_pairs += min(k, len(cands))
        if n_pairs >= max_pairs_in_memory or qi == len(lists) - 1:
            images: list[Any] = []
            texts: list[str] = []
            cache: dict[str, Any] = {}
            for cj in chunk:
                query = queries[cj]
                text_query = _is_text(query)
                query_image = None if text_query else load_image(query)
                for c in lists[cj][:k]:
                    cid = c["id"]
                    if cid not in cache:
                        value = resolve(cid)
                        cache[cid] = _item_image(value) if text_query else _item_text(value)
                    if text_query:
                        images.append(cache[cid])
                        texts.append(query)
                    else:
                        images.append(query_image)
                        texts.append(cache[cid])
            logits = (
                cross_encoder.logits(images, texts, batch_size=batch_size)
                if texts
                else np.zeros((0, 2), dtype=np.float32)
            )
            offset = 0
            for cj in chunk:
                top = lists[cj][:k]
                block_logits = logits[offset : offset + len(top)]
                offset += len(top)
                results.append(_merge(lists[cj], block_logits, k, mode, alpha))
            chunk, n_pairs = [], 0
    return results


def _merge(
    cands: list[dict[str, Any]], logits: np.ndarray, k: int, mode: str, alpha: float
) -> list[dict[str, Any]]:
    from xmr.models.cross_encoders import match_probability

    top, rest = cands[:k], cands[k:]
    first = np.array([c["score"] for c in top], dtype=np.float64)
    final = combine_scores(logits, first, mode, alpha)
    probs = match_probability(logits)
    # Stable sort on -score: ties keep their first-stage order.
    order = np.argsort(-final, kind="stable")
    out = []
    for i in order:
        c = dict(top[i])
        c.update(
            score=float(final[i]),
            first_stage_score=float(first[i]),
            match_prob=float(probs[i]),
            reranked=True,
        )
        out.append(c)
    shift = 0.0
    if out and rest and rest[0]["score"] >= out[-1]["score"]:
        shift = rest[0]["score"] - out[-1]["score"] + _SHIFT_MARGIN
    for c in rest:
        c = dict(c)
        c.update(score=c["score"] - shift, first_stage_score=c["score"], reranked=False)
        out.append(c)
    return out


def dataset_lookup(split: Any, *, side: str = "image") -> Callable[[str], Any]:
    """id -> the item (for ``side="image"``, text queries) or the query text (``side="text"``,
    image queries: the candidates are query ids of the split)."""
    if side == "image":
        items = split.items

        def item(item_id: str) -> Any:
            try:
                return items[str(item_id)]
            except KeyError:
                raise XmrError(f"rerank: no item '{item_id}' in split '{split.name}'") from None

        return item
    if side == "text":
        queries = split.queries

        def text(query_id: str) -> str:
            try:
                return queries[str(query_id)].text
            except KeyError:
                raise XmrError(f"rerank: no query '{query_id}' in split '{split.name}'") from None

        return text
    raise XmrError(f"dataset_lookup side must be 'image' or 'text', got '{side}'")


# --- on top of a Searcher ----------------------------------------------------------------------


@dataclass
class RerankedResult(SearchResult):
    """A search hit after reranking: ``score`` is the final score (see the module docstring),
    ``rank`` the final rank; the first stage's score and rank are kept beside them."""

    first_stage_score: float | None = None
    first_stage_rank: int | None = None
    match_prob: float | None = None
    reranked: bool = False


def searcher_lookup(searcher: Any, *, text_queries: bool) -> Callable[[str], Any]:
    """id -> the item's image (text queries) or its first caption (image queries)."""

    def image(item_id: str) -> Any:
        ref = searcher.image_ref(item_id)
        if ref is None:
            raise XmrError(f"rerank: item '{item_id}' has no image for the cross-encoder to read")
        return ref

    def caption(item_id: str) -> str:
        captions = searcher.item(item_id).get("captions") or []
        if not captions:
            raise XmrError(
                f"rerank: item '{item_id}' has no caption; an image query is reranked against "
                "item captions"
            )
        return captions[0]

    return image if text_queries else caption


def search_reranked(
    searcher: Any,
    queries: Sequence[Any],
    cross_encoder: Any,
    *,
    k: int = 10,
    rerank_k: int = DEFAULT_RERANK_K,
    mode: str = "itm",
    alpha: float = 1.0,
    category: str | None = None,
    batch_size: int = 32,
) -> list[list[Any]]:
    """Two-stage search: the Searcher retrieves ``max(k, rerank_k)`` per query, the cross-encoder
    rescores the first ``rerank_k``, and the best ``k`` are returned.

    ``queries`` are all texts (matched against item images) or all images (matched against item
    captions). Results are ``SearchResult``s with ``first_stage_score``, ``first_stage_rank``,
    ``match_prob`` and ``reranked`` added.
    """
    if not queries:
        return []
    text_queries = all(isinstance(q, str) for q in queries)
    if not text_queries and any(isinstance(q, str) for q in queries):
        raise XmrError("rerank: queries must be all texts or all images")
    depth = max(int(k), int(rerank_k))
    if text_queries:
        first = searcher.search_texts(list(queries), depth, category=category)
    else:
        first = searcher.search_images(list(queries), depth, category=category)
    candidate_lists = [[{"id": r.id, "score": r.score, "result": r} for r in row] for row in first]
    reranked = rerank_many(
        queries,
        candidate_lists,
        cross_encoder,
        lookup=searcher_lookup(searcher, text_queries=text_queries),
        k=rerank_k,
        mode=mode,
        alpha=alpha,
        batch_size=batch_size,
    )
    out = []
    for row in reranked:
        results = []
        for rank, r in enumerate(row[:k], 1):
            base = asdict(r["result"])
            base.update(
                score=r["score"],
                rank=rank,
                first_stage_score=r["first_stage_score"],
                first_stage_rank=r["result"].rank,
                match_prob=r.get("match_prob"),
                reranked=r["reranked"],
            )
            results.append(RerankedResult(**base))
        out.append(results)
    return out


# --- evaluation ----------------------------------------------------------------------------------


def evaluate_reranked(
    split: Any,
    text_emb: Any,
    image_emb: Any,
    cross_encoder: Any,
    *,
    rerank_k: int = DEFAULT_RERANK_K,
    mode: str = "itm",
    alpha: float = 1.0,
    directions: Sequence[str] = ("t2i",),
    k: int = 10,
    ks: Sequence[int] | None = None,
    batch_size: int = 32,
    device: Any = None,
    rankings_out: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, float]:
    """Metrics of two-stage retrieval on ``split``, beside the first stage's own.

    The first stage ranks by the embeddings (``text_emb`` rows in ``split.queries`` order,
    ``image_emb`` rows in ``split.items`` order, as :func:`xmr.eval.evaluate.evaluate_split`
    takes them); the cross-encoder rescores each query's top ``rerank_k``. Keys:
    ``{direction}/<metric>`` for the reranked rankings and ``first_stage/{direction}/<metric>``
    for the first stage, on the same queries and to the same depth. ``rankings_out``, when
    given, receives both rankings (``{direction}`` and ``first_stage/{direction}`` -> query id
    -> ranked ids), for a report of what reranking changed.
    """
    from xmr.eval.evaluate import evaluate_rankings, recall_ks, split_categories
    from xmr.eval.ranking import topk_from_embeddings
    from xmr.models.cross_encoders import create_cross_encoder

    ks = tuple(ks or recall_ks(k))
    ce = create_cross_encoder(cross_encoder) if isinstance(cross_encoder, str) else cross_encoder
    query_ids, item_ids = list(split.queries), list(split.items)
    out: dict[str, float] = {}
    for direction in directions:
        if direction == "t2i":
            q_emb, c_emb, q_ids, c_ids = text_emb, image_emb, query_ids, item_ids
            relevance = split.relevance
            queries = {q: split.queries[q].text for q in q_ids}
            lookup = dataset_lookup(split, side="image")
        elif direction == "i2t":
            q_emb, c_emb, q_ids, c_ids = image_emb, text_emb, item_ids, query_ids
            relevance = split.item_relevance()
            queries = {i: split.items[i].image for i in q_ids}
            lookup = dataset_lookup(split, side="text")
        else:
            raise XmrError(f"unknown direction '{direction}' (t2i or i2t)")
        rows = np.array([n for n, q in enumerate(q_ids) if relevance.get(q)], dtype=np.int64)
        kept = [q_ids[n] for n in rows]
        if direction == "i2t" and any(queries[q] is None for q in kept):
            raise XmrError("i2t reranking needs every evaluated item to have an image")
        depth = min(max(rerank_k, k, *ks), len(c_ids))
        index, scores = topk_from_embeddings(q_emb, c_emb, depth, rows=rows, device=device)
        first = {
            q: [
                {"id": c_ids[j], "score": float(s)}
                for j, s in zip(index[n], scores[n], strict=True)
            ]
            for n, q in enumerate(kept)
        }
        reranked = rerank_many(
            [queries[q] for q in kept],
            [first[q] for q in kept],
            ce,
            lookup=lookup,
            k=rerank_k,
            mode=mode,
            alpha=alpha,
            batch_size=batch_size,
        )
        categories = split_categories(split, direction)
        for prefix, rankings in (
            ("", {q: [r["id"] for r in row] for q, row in zip(kept, reranked, strict=True)}),
            ("first_stage/", {q: [c["id"] for c in first[q]] for q in kept}),
        ):
            metrics = evaluate_rankings(
                rankings,
                relevance,
                ks=ks,
                k=k,
                direction=direction,
                categories=categories,
                query_ids=q_ids,
            )
            out.update({f"{prefix}{key}": value for key, value in metrics.items()})
            if rankings_out is not None:
                rankings_out[f"{prefix}{direction}"] = rankings
    return out
