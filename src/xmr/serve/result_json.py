"""What a search result looks like in the HTTP API: image URLs instead of the server's paths, a
caption, the named attributes of a 0/1 attribute vector, and the second stage when it ran."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from xmr.search import SearchResult

_BITS = re.compile(r"\s*[01](\s*,\s*[01])+\s*")


def result_json(r: SearchResult, attribute_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A result as the API shows it: image URLs instead of the server's paths, the first
    caption (or the attribute's meaning) as ``caption``, the second stage when it ran."""
    enc = quote(r.id, safe="")
    labels = attribute_labels(r.attribute, attribute_names)
    caption = r.captions[0] if r.captions else (", ".join(labels) if labels else r.attribute)
    out = {
        "id": r.id,
        "score": round(float(r.score), 6),
        "image_url": f"/api/items/{enc}/image" if r.image else None,
        "thumbnail_url": f"/api/items/{enc}/thumbnail" if r.image else None,
        "caption": caption,
        "captions": list(r.captions),
        "attribute": r.attribute,
        "category": r.category,
    }
    if labels is not None:
        out["attribute_labels"] = labels
    if r.reranked is not None:
        out["first_stage_score"] = round(float(r.first_stage_score or 0.0), 6)
        out["first_stage_rank"] = r.first_stage_rank
        out["match_prob"] = None if r.match_prob is None else round(float(r.match_prob), 6)
        out["reranked"] = bool(r.reranked)
    return out


def attribute_labels(attribute: str | None, names: Sequence[str] | None) -> list[str] | None:
    """The names of the set positions of a 0/1 attribute vector, when the service knows the
    vector's layout (``names``: the service's ``attribute_names``) and the vector has its
    length; else None."""
    if not names or not attribute or not _BITS.fullmatch(attribute):
        return None
    bits = [b.strip() for b in attribute.split(",")]
    if len(bits) != len(names):
        return None
    return [n.replace("_", " ") for n, b in zip(names, bits, strict=True) if b == "1"]


def record_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of an item's metadata record that a :class:`SearchResult` carries."""
    return {
        "image": record.get("image"),
        "captions": list(record.get("captions") or []),
        "attribute": record.get("attribute"),
        "category": record.get("category"),
    }
