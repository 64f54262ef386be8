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

This module is the algorithm only: reranking a Searcher's results is
:meth:`xmr.search.Searcher.rerank` / :meth:`~xmr.search.Searcher.search_reranked`, and the
two-stage metrics of a data set are :func:`xmr.eval.reranked.evaluate_reranked`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.models.cross_encoders import create_cross_encoder, match_probability

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

    if len(queries) != len(candidate_lists):
        raise XmrError(f"rerank: {len(queries)} queries but {len(candidate_lists)} candidate lists")
    if k < 1:
        raise XmrError(f"rerank: k (how many candidates to rescore) must be at least 1, not {k}")
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
