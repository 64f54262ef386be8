"""Text search modes of the Searcher: ``dense``, ``bm25`` and ``hybrid`` (both rankings fused by
:func:`xmr.fusion.hybrid.fuse_ranked_lists`), and the torch-free query checks BM25 needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xmr.errors import XmrError
from xmr.fusion.hybrid import fuse_ranked_lists

SEARCH_MODES = ("dense", "bm25", "hybrid")


def fuse_rows(
    dense: Sequence[Sequence[Any]],
    lexical: Sequence[Sequence[Any]],
    hybrid: str,
    weights: Sequence[float] | None,
    rrf_k: int,
    k: int,
) -> list[list[tuple[str, float]]]:
    """Per query, the dense and the BM25 hits fused into the best ``k`` (id, fused score)."""
    out = []
    for d_row, l_row in zip(dense, lexical, strict=True):
        fused = fuse_ranked_lists(
            [[(h.id, h.score) for h in d_row], [(h.id, h.score) for h in l_row]],
            mode=hybrid,
            weights=weights,
            rrf_k=rrf_k,
            k=k,
        )
        out.append([(f.id, f.score) for f in fused])
    return out


def check_query_texts(texts: Sequence[str]) -> list[str]:
    """:func:`xmr.models.base.check_texts` (strings, valid UTF-8, not blank, the same messages)
    without importing torch, for BM25 searches."""
    out = list(texts)
    for n, text in enumerate(out, 1):
        where = "the query text" if len(out) == 1 else f"the query text {n}"
        if not isinstance(text, str):
            raise XmrError(f"{where} must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "replace").decode("utf-8")[:60]
            raise XmrError(
                f"{where} {shown!r} is not valid UTF-8 (it holds undecodable bytes)"
            ) from None
        if not text.strip():
            raise XmrError(f"{where} is empty")
    return out


def check_k(k: Any) -> int:
    if isinstance(k, bool) or int(k) <= 0:
        raise XmrError(f"k must be a positive number, got {k}")
    return int(k)
