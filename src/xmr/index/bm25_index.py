"""A lexical BM25 index: the text of each item, scored by BM25 through ``bm25s``.

It is the sibling of the vector :class:`~xmr.index.Index`: the same directory layout (manifest,
ids, items.jsonl, written whole and swapped in atomically), the same :class:`~xmr.index.Hit`
results and category filter, but it is searched by text, not by vectors. Layout::

    bm25/           bm25s' own files (sparse score matrix, vocabulary, parameters)
    ids.json        string ids; document position i is ids[i]
    items.jsonl     one metadata record per position (see xmr.data.records)
    manifest.json   backend "bm25": k1, b, method, tokenizer (resolved), counts, vocabulary size

Scoring (``method``, bm25s' names; ``N`` documents, ``df`` documents holding the term, ``tf``
its count in the document, ``dl`` the document's length in tokens, ``avgdl`` the mean)::

    lucene (default)  idf = ln(1 + (N - df + 0.5) / (df + 0.5))
    robertson         idf = max(0, ln((N - df + 0.5) / (df + 0.5)))   (a term in more than
                      half the documents adds nothing, rather than a negative score)
    both              tf' = tf / (tf + k1 * (1 - b + b * dl / avgdl))
    atire             idf = ln(N / df)
                      tf' = tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    score(q, d) = sum over the query's tokens t (repeats counted) of idf(t) * tf'(t, d)

Query tokens outside the vocabulary are dropped. Only documents with a positive score are
returned (a document sharing no token with the query is not a hit), ties in the lower
position first. The spec string is ``bm25`` or ``bm25:k1=1.2,b=0.75,method=lucene,tokenizer=jieba``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.records import document_text
from xmr.errors import XmrError
from xmr.index.layout import FORMAT, FORMAT_VERSION, IDS_FILE, ITEMS_FILE, MANIFEST
from xmr.index.store import Hit
from xmr.index.tokenize import get_tokenizer, resolve_tokenizer
from xmr.io.atomic import atomic_replace_dir
from xmr.io.jsonio import read_json, read_jsonl, write_jsonl
from xmr.io.provenance import now, xmr_version

log = logging.getLogger(__name__)

BACKEND = "bm25"
BM25_DIR = "bm25"
METHODS = ("lucene", "robertson", "atire")
DEFAULTS: dict[str, Any] = {"k1": 1.5, "b": 0.75, "method": "lucene", "tokenizer": "auto"}


def is_bm25_spec(spec: object) -> bool:
    """True for ``bm25`` and ``bm25:...`` model specs."""
    return isinstance(spec, str) and (spec == BACKEND or spec.startswith(BACKEND + ":"))


def parse_bm25_spec(spec: str = BACKEND) -> dict[str, Any]:
    """``bm25:k1=1.2,b=0.75,method=lucene,tokenizer=jieba`` -> options (defaults filled in)."""
    if not is_bm25_spec(spec):
        raise XmrError(f"not a BM25 spec: {spec!r} (bm25 or bm25:k1=..,b=..,tokenizer=..)")
    options = dict(DEFAULTS)
    rest = spec[len(BACKEND) + 1 :]
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in DEFAULTS:
            raise XmrError(
                f"bad BM25 option {part!r} in {spec!r} (options: {', '.join(DEFAULTS)}, as key=value)"
            )
        options[key] = value.strip()
    return check_bm25_options(**options)


def check_bm25_options(
    k1: Any = 1.5, b: Any = 0.75, method: str = "lucene", tokenizer: str = "auto"
) -> dict[str, Any]:
    """Validated BM25 options: ``k1 >= 0``, ``0 <= b <= 1``, a known method and tokenizer."""
    try:
        k1, b = float(k1), float(b)
    except (TypeError, ValueError):
        raise XmrError(f"BM25 k1 and b must be numbers, got k1={k1!r}, b={b!r}") from None
    if k1 < 0 or not 0 <= b <= 1:
        raise XmrError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    if method not in METHODS:
        raise XmrError(f"unknown BM25 method {method!r} (known: {', '.join(METHODS)})")
    if tokenizer != "auto":
        resolve_tokenizer(tokenizer)
    return {"k1": k1, "b": b, "method": method, "tokenizer": tokenizer}


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise XmrError("BM25 needs the bm25s package: pip install 'xmr[text]'") from None
    return bm25s


@dataclass
class BM25Index:
    """Documents (one text per id) with metadata, searched by BM25. Build with
    :func:`build_bm25_index`, read with :func:`load_bm25_index` (or :func:`xmr.index.open_index`)."""

    retriever: Any
    ids: list[str]
    items: list[dict[str, Any]]
    manifest: dict[str, Any]
    path: Path | None = None
    _positions: dict[str, int] = field(default_factory=dict, repr=False)
    _by_category: dict[str, np.ndarray] | None = field(default=None, repr=False)

    kind = "lexical"

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.items):
            raise XmrError(
                f"{self.path or 'index'}: {len(self.ids)} ids but {len(self.items)} items"
            )
        self._positions = {id_: i for i, id_ in enumerate(self.ids)}
        if len(self._positions) != len(self.ids):
            raise XmrError(f"{self.path or 'index'}: duplicate ids in the index")
        self.tokenizer_name = self.manifest["index"]["tokenizer"]
        self._tokenize = get_tokenizer(self.tokenizer_name)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    def position(self, item_id: str) -> int:
        try:
            return self._positions[item_id]
        except KeyError:
            raise XmrError(f"unknown item id '{item_id}'") from None

    def item(self, item_id: str) -> dict[str, Any]:
        return self.items[self.position(item_id)]

    def categories(self) -> dict[str, int]:
        groups = self._category_positions()
        return {c: len(p) for c, p in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}

    def _category_positions(self) -> dict[str, np.ndarray]:
        if self._by_category is None:
            groups: dict[str, list[int]] = {}
            for i, rec in enumerate(self.items):
                if rec.get("category"):
                    groups.setdefault(str(rec["category"]), []).append(i)
            self._by_category = {c: np.asarray(p, dtype=np.int64) for c, p in groups.items()}
        return self._by_category

    def tokenize(self, text: str) -> list[str]:
        """The tokens the index cuts ``text`` into (its recorded tokenizer)."""
        return self._tokenize(text)

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every document for ``text`` (float32, one per position)."""
        ids = self.retriever.get_tokens_ids(self.tokenize(text))
        if not ids:
            return np.zeros(len(self), dtype=np.float32)
        return np.asarray(self.retriever.get_scores(ids), dtype=np.float32)

    def search_texts(
        self, texts: Sequence[str], k: int = 10, *, category: str | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits (positive scores only) per text, best first, ties to the lower position."""
        if isinstance(texts, str):
            raise TypeError("search_texts takes a list of strings")
        allowed = None
        if category is not None:
            by_cat = self._category_positions()
            if category not in by_cat:
                known = ", ".join(sorted(by_cat)) or "none"
                raise XmrError(f"unknown category '{category}' (known: {known})")
            allowed = by_cat[category]
        out = []
        for text in texts:
            s = self.scores(text)
            positions = np.flatnonzero(s > 0) if allowed is None else allowed[s[allowed] > 0]
            cand = s[positions]
            if len(positions) > k:
                kth = np.partition(cand, len(cand) - k)[len(cand) - k]
                keep = cand >= kth
                positions, cand = positions[keep], cand[keep]
            order = np.lexsort((positions, -cand))[:k]
            out.append([Hit(self.ids[p], float(s[p]), int(p)) for p in positions[order]])
        return out

    def add(self, records: Sequence[dict[str, Any]], *, upsert: bool = False) -> int:
        """Add documents (metadata records whose ``captions`` are their text, as
        :func:`xmr.data.records.item_record` writes them); an id already there is an error
        unless ``upsert`` replaces it. BM25's IDF and average length are corpus statistics, so
        every document is re-scored: the index afterwards equals one built over the new corpus
        (same k1, b, method and the tokenizer it resolved). Returns the number added."""
        new = {str(r["id"]): dict(r) for r in records}
        if len(new) != len(records):
            raise XmrError("duplicate ids among the documents to add")
        clash = [i for i in new if i in self._positions]
        if clash and not upsert:
            raise XmrError(f"id '{clash[0]}' is already in the index (upsert=True replaces it)")
        kept = [(i, r) for i, r in zip(self.ids, self.items, strict=True) if i not in new]
        self._reindex([*kept, *new.items()])
        return len(new)

    def remove(self, ids: Sequence[str], *, missing_ok: bool = False) -> list[str]:
        """Remove documents by id and re-score the rest (see :meth:`add`); an unknown id is an
        error unless ``missing_ok``. Returns the ids removed."""
        unknown = [i for i in ids if i not in self._positions]
        if unknown and not missing_ok:
            raise XmrError(f"unknown item id '{unknown[0]}'")
        gone = {i for i in ids if i in self._positions}
        if gone:
            if len(gone) == len(self.ids):
                raise XmrError("that would remove every document; a BM25 index needs one")
            self._reindex([(i, r) for i, r in zip(self.ids, self.items, strict=True)
                           if i not in gone])  # fmt: skip
        return [i for i in dict.fromkeys(ids) if i in gone]

    def _reindex(self, documents: Sequence[tuple[str, dict[str, Any]]]) -> None:
        texts = [document_text(r.get("captions") or []) for _, r in documents]
        empty = next((i for (i, _), t in zip(documents, texts, strict=True) if not t), None)
        if empty is not None:
            raise XmrError(
                f"document '{empty}' has no text in its record (captions): this index cannot be "
                "re-scored; rebuild it from the data set"
            )
        options = self.manifest["index"]
        tokens = [self.tokenize(t) for t in texts]
        retriever = _bm25s().BM25(k1=options["k1"], b=options["b"], method=options["method"])
        retriever.index(tokens, show_progress=False)
        self.retriever = retriever
        self.ids = [i for i, _ in documents]
        self.items = [r for _, r in documents]
        self._positions = {i: n for n, i in enumerate(self.ids)}
        self._by_category = None
        options["vocabulary"] = len(retriever.vocab_dict)
        self.manifest.update(count=len(self.ids), tokens=int(sum(len(t) for t in tokens)),
                             updated=now())  # fmt: skip

    def info(self) -> dict[str, Any]:
        m = self.manifest
        out = {
            "path": str(self.path) if self.path else None,
            "backend": BACKEND,
            "index": m["index"],
            "count": len(self),
            "model": m["model"]["spec"],
            "created": m.get("created"),
            "xmr_version": m.get("xmr_version"),
        }
        if self.categories():
            out["categories"] = self.categories()
        return out

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the index directory atomically (replacing an older xmr index there)."""
        dest = Path(directory) if directory is not None else self.path
        if dest is None:
            raise XmrError("no directory to save the index to")
        self.manifest["count"] = len(self)

        def fill(tmp: Path) -> None:
            self.retriever.save(str(tmp / BM25_DIR), show_progress=False)
            (tmp / IDS_FILE).write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
            write_jsonl(tmp / ITEMS_FILE, self.items)
            (tmp / MANIFEST).write_text(
                json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )

        atomic_replace_dir(dest, fill, may_replace=_is_xmr_index)
        self.path = dest
        return dest


def build_bm25_index(
    texts: Sequence[str],
    ids: Sequence[str],
    spec: str = BACKEND,
    *,
    items: Sequence[dict[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
) -> BM25Index:
    """Index one text per id with BM25 (``spec``: see :func:`parse_bm25_spec`).

    Args:
        texts: the document texts (an item's captions joined by newlines, a BEIR title + text).
        ids: one unique string id per text.
        items: metadata records aligned with ``ids`` (default ``{"id": id}``).
        source: what the texts came from (recorded in the manifest).
    """
    options = parse_bm25_spec(spec)
    texts, ids = list(texts), [str(i) for i in ids]
    if len(texts) != len(ids):
        raise XmrError(f"{len(texts)} texts but {len(ids)} ids")
    if not texts:
        raise XmrError("no documents to index")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise XmrError(f"duplicate id '{dup}'; ids must be unique")
    # The text stays in the record (captions) so the index can be re-scored after an add/remove.
    records = (
        [{"id": i, "captions": [t]} for i, t in zip(ids, texts, strict=True)]
        if items is None
        else [dict(r) for r in items]
    )
    if len(records) != len(ids):
        raise XmrError(f"{len(ids)} ids but {len(records)} metadata records")
    tokenizer, reason = resolve_tokenizer(options["tokenizer"], texts)
    if reason:
        log.info("bm25: %s", reason)
    tokenize = get_tokenizer(tokenizer)
    started = time.perf_counter()
    tokens = [tokenize(t) for t in texts]
    bm25s = _bm25s()
    retriever = bm25s.BM25(k1=options["k1"], b=options["b"], method=options["method"])
    retriever.index(tokens, show_progress=False)
    build_s = time.perf_counter() - started
    index_config = {"type": "BM25", "exact": True, **options, "tokenizer": tokenizer}
    index_config["requested_tokenizer"] = options["tokenizer"]
    index_config["tokenizer_reason"] = reason
    index_config["vocabulary"] = len(retriever.vocab_dict)
    index_config["bm25s_version"] = getattr(bm25s, "__version__", None)
    resolved_spec = (
        f"bm25:k1={options['k1']:g},b={options['b']:g},method={options['method']},"
        f"tokenizer={tokenizer}"
    )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xmr_version": xmr_version(),
        "created": now(),
        "updated": now(),
        "backend": BACKEND,
        "requested_spec": spec,
        "index": index_config,
        "metric": "bm25",
        "count": len(ids),
        "tokens": int(sum(len(t) for t in tokens)),
        "build_seconds": round(build_s, 3),
        "model": {"spec": resolved_spec, "backend": BACKEND},
        "source": source,
    }
    return BM25Index(retriever, ids, records, manifest)


def load_bm25_index(directory: str | Path, manifest: dict[str, Any] | None = None) -> BM25Index:
    """Read a BM25 index directory written by :meth:`BM25Index.save`."""
    path = Path(directory)
    if manifest is None:
        if not (path / MANIFEST).is_file():
            raise XmrError(f"{path}: no {MANIFEST} (not an xmr index directory)")
        manifest = read_json(path / MANIFEST)
    if manifest.get("backend") != BACKEND:
        raise XmrError(f"{path}: not a BM25 index (backend {manifest.get('backend')!r})")
    for name in (BM25_DIR, IDS_FILE, ITEMS_FILE):
        if not (path / name).exists():
            raise XmrError(f"{path / name}: missing; the index directory is incomplete")
    retriever = _bm25s().BM25.load(str(path / BM25_DIR), show_progress=False)
    ids = [str(i) for i in read_json(path / IDS_FILE, list)]
    items = list(read_jsonl(path / ITEMS_FILE))
    return BM25Index(retriever, ids, items, manifest, path)


def _is_xmr_index(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
