"""The one result type of a search, and a batched text query."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from xmr.data.records import describe_image

_SECOND_STAGE = ("first_stage_score", "first_stage_rank", "match_prob", "reranked")


@dataclass
class SearchResult:
    """One ranked hit with the item's metadata (``image`` is its source record, see
    :mod:`xmr.data.records`).

    After reranking (:meth:`Searcher.rerank`), ``score`` and ``rank`` are the final ones (see
    :mod:`xmr.rerank` for the formulas) and the second-stage fields are set: the first stage's
    score and rank, the cross-encoder's match probability (None for results below the reranked
    block) and ``reranked``. Without a second stage they stay None.
    """

    id: str
    score: float
    rank: int
    image: dict[str, Any] | None = None
    captions: list[str] = field(default_factory=list)
    attribute: str | None = None
    category: str | None = None
    first_stage_score: float | None = None
    first_stage_rank: int | None = None
    match_prob: float | None = None
    reranked: bool | None = None

    @property
    def image_source(self) -> str:
        return describe_image(self.image)

    def to_dict(self) -> dict[str, Any]:
        """The result as a dict; the second-stage keys only when a second stage ran."""
        out = asdict(self)
        if self.reranked is None:
            for key in _SECOND_STAGE:
                out.pop(key)
        return out


# The reranked results used to be their own subclass; one type now carries both stages.
RerankedResult = SearchResult


@dataclass(frozen=True)
class TextQuery:
    """One text query of a batch (:meth:`Searcher.search_text_batch`)."""

    text: str
    k: int = 10
    category: str | None = None
