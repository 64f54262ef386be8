"""Searcher: an encoder, an index and its metadata -> ranked results (the one search of xmr).

    searcher = Searcher.from_index_dir("runs/index")         # loads the model the index names
    for r in searcher.search_text("a white SUV", k=5):
        print(r.id, r.score, r.image, r.captions)

The model is checked against the one that built the index (weights fingerprint): another model
is a :class:`~xmr.errors.ModelMismatchError`, never a silently wrong ranking. ``xmr search`` and
the service (:mod:`xmr.serve`) both search through this class; every answer is a list of
:class:`SearchResult`, the one result type (reranked results fill its second-stage fields).

Batch API: :meth:`Searcher.search_texts` / :meth:`~Searcher.search_images` encode many queries in
one encoder call; :meth:`Searcher.search_text_batch` takes queries with their own ``k`` and
category (what a micro-batcher collects) and still makes one encoder call; :meth:`Searcher.rerank`
rescores many queries' first-stage lists with shared cross-encoder batches.

Lock discipline (one Searcher serves many threads):

* every encoder call holds the *encoder lock*: a model is not thread-safe (tokenizers, module
  state) and one call already uses every core, so calls run one at a time;
* every cross-encoder call holds the *reranker lock*, for the same reasons;
* every index read (a search, a metadata or vector lookup) and every write (:meth:`add_item`)
  holds the *index lock*, so a search never sees half an addition;
* a query is encoded, then searched, then reranked, each step under its own lock; the only
  nesting is a rerank looking items up (the reranker lock, then briefly the index lock), never
  the other way round, so the locks cannot deadlock, and a slow encoder call never blocks the
  searches of queries already encoded.
"""

from __future__ import annotations

from xmr.search.reranking import Reranker, search_reranked, searcher_lookup
from xmr.search.results import RerankedResult, SearchResult, TextQuery
from xmr.search.searcher import Searcher

__all__ = [
    "RerankedResult",
    "Reranker",
    "SearchResult",
    "Searcher",
    "TextQuery",
    "search_reranked",
    "searcher_lookup",
]
