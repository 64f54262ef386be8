"""The one in-memory model of a retrieval data set, shared by every reader and stage."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.data.images import ImageRef
from xmr.errors import XmrError


@dataclass
class Item:
    """A retrievable thing: an image, optionally with captions, an attribute string, a category.

    Text-only corpora (BEIR) have ``image=None`` and the document text as their one caption.
    """

    id: str
    image: ImageRef | None = None
    captions: list[str] = field(default_factory=list)
    attribute: str | None = None
    category: str | None = None


@dataclass
class Query:
    id: str
    text: str
    category: str | None = None


@dataclass
class Split:
    """One split (train/valid/test). ``relevance`` maps query id -> relevant item ids (many-to-many).

    ``pairs`` are the training pairs: item id -> the texts that describe it (several captions are
    sampled per step when training).

    A query that is a key of ``relevance`` with an empty set is judged with nothing relevant
    (a MUGE ``"item_ids": []``): it scores 0 in every mean, as the official scorers count it; a
    query that is not a key has no ground truth and is not scored.

    ``item_names``: item id -> the name the ground truth gives that item where it is spelled
    otherwise than the id (a Track2 ``test_gt.txt`` writing ``000240.jpg`` for the image the
    label file calls ``000240``). Submissions are written with it and matched against it
    exactly, as the official scorer compares names.

    ``grades``: query id -> item id -> graded relevance, where the ground truth grades it (BEIR
    qrels scores, for nDCG's graded gains); empty means every relevant pair has grade 1.

    Readers may share one relevance set between queries with the same relevant items (Track2
    texts of one attribute string: thousands of texts x thousands of images); treat the sets as
    read-only and copy one before changing it.
    """

    name: str
    items: dict[str, Item] = field(default_factory=dict)
    queries: dict[str, Query] = field(default_factory=dict)
    relevance: dict[str, set[str]] = field(default_factory=dict)
    pairs: dict[str, list[str]] = field(default_factory=dict)
    item_names: dict[str, str] = field(default_factory=dict)
    grades: dict[str, dict[str, float]] = field(default_factory=dict)

    def item_name(self, item_id: str) -> str:
        """The name the ground truth (and so a submission) uses for ``item_id``."""
        return self.item_names.get(item_id, item_id)

    @property
    def has_relevance(self) -> bool:
        return any(self.relevance.values())

    def item_relevance(self) -> dict[str, set[str]]:
        """The inverse relation: item id -> query ids it is relevant to (for image->text)."""
        inverse: dict[str, set[str]] = {}
        for qid, item_ids in self.relevance.items():
            for iid in item_ids:
                inverse.setdefault(iid, set()).add(qid)
        return inverse

    def categories(self) -> Counter:
        return Counter(it.category for it in self.items.values() if it.category)

    def n_relevant_pairs(self) -> int:
        return sum(len(v) for v in self.relevance.values())


@dataclass
class RetrievalDataset:
    """A data set in one of the registered formats, as splits of items, queries and relevance.

    ``skipped`` counts the bad records a reader dropped with ``skip_bad=True``;
    ``skipped_examples`` keeps the first few errors (file:line: field: what is wrong).
    """

    format: str
    root: Path
    splits: dict[str, Split] = field(default_factory=dict)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def skip_record(self) -> dict[str, Any]:
        """What reading dropped, for manifests and summaries: ``skipped_records`` (the count) and
        ``skipped_examples`` (the first errors, ``file:line, field 'f': what is wrong``)."""
        return {"skipped_records": self.skipped, "skipped_examples": list(self.skipped_examples)}

    def source(self, path: str | Path, split: str | None = None) -> dict[str, Any]:
        """Where a split came from, as artefacts record it (``source`` in an embeddings
        manifest): path, format, split and what reading skipped."""
        return {"path": str(path), "format": self.format, "split": split, **self.skip_record()}

    def skipped_warning(self, path: str | Path | None = None) -> str | None:
        """One line for stderr when bad records were skipped (None when none were)."""
        if not self.skipped:
            return None
        first = f"; first: {self.skipped_examples[0]}" if self.skipped_examples else ""
        return f"skipped {self.skipped} bad record(s) reading {path or self.root}{first}"

    def split(self, name: str | None = None, *, need_relevance: bool = False) -> Split:
        """Return split ``name``; without a name, the only split (or the only one with relevance
        when ``need_relevance``). Ambiguity is an error that lists the choices."""
        if name is not None:
            if name not in self.splits:
                raise XmrError(
                    f"{self.root}: no split '{name}' (available: {', '.join(self.splits) or 'none'})"
                )
            return self.splits[name]
        candidates = [s for s in self.splits.values() if s.has_relevance or not need_relevance]
        if len(candidates) == 1:
            return candidates[0]
        what = "splits with relevance" if need_relevance else "splits"
        names = ", ".join(s.name for s in candidates) or "none"
        raise XmrError(f"{self.root}: choose a split with split= ({what}: {names})")
