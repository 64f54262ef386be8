"""``xmr translate``: translate a split's query texts and captions with an LLM, then clean them
as seed 001 prepared its data, and write the result as a BEIR data set with images.

The client machinery is ``xmr caption``'s: the same captioners (an OpenAI-compatible API or a
local ``hf:`` image-text-to-text model answering text-only requests), bounded concurrency,
retries, and a resumable cache ``out/translations.jsonl`` (one line per text as each answer
arrives, keyed by the text's sha256 + model + prompt sha256 + params; identical texts share one
request). Layout of ``out``::

    translations.jsonl   the answer cache (``text_sha256``, ``translation``, ``kind``, ``source``)
    dataset/             the translated, cleaned split as BEIR (``xmr data convert --to beir``:
                         corpus lines carry the image and the captions joined by spaces)
    translate.json       the summary: counts translated / cached / failed and what was dropped

Cleaning, each step on by default and counted:

- ``drop_foreign``: drop characters outside the target language's script (for ``en``: anything
  that is not Latin, a digit, punctuation or a space; the scripts known are in ``SCRIPTS``;
  another target gets no script cleaning);
- ``drop_empty``: drop texts left empty (and a query whose translation failed);
- ``drop_duplicates``: a query text equal to an earlier one is dropped, its relevant items
  joining the earlier query's (no judgement is lost); repeated captions of an item are dropped;
- ``drop_uncaptioned``: drop items left without any caption (a failed caption or translation),
  with their relevance entries, as seed 001 dropped images whose caption failed.
"""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path
from typing import Any

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.io import atomic_replace_dir, atomic_write_json, prepare_output_dir
from xmr.models.captioners import Captioner, CaptionRequest, cache_key, sha256_text
from xmr.workflows.answer_cache import AnswerCache, AnswerJob, answer_missing

CACHE_FILE = "translations.jsonl"
SUMMARY_FILE = "translate.json"
DATASET_DIR = "dataset"
DEFAULT_PROMPT = (
    "Translate the following text into {language}. Answer with the translation only, "
    "without quotes or notes.\n\n{text}"
)
LANGUAGES = {"en": "English", "zh": "Chinese", "fr": "French", "de": "German", "es": "Spanish"}
# Unicode character-name prefixes of each target's letters; other letters are dropped.
SCRIPTS = {
    "en": ("LATIN",),
    "fr": ("LATIN",),
    "de": ("LATIN",),
    "es": ("LATIN",),
    "zh": ("CJK", "LATIN"),
}
WHAT = ("queries", "captions")


def clean_script(text: str, target: str) -> str:
    """Keep the letters of ``target``'s script, digits, punctuation and spaces; collapse runs of
    spaces. An unknown target is returned as it is (whitespace collapsed)."""
    prefixes = SCRIPTS.get(target)
    if prefixes is not None:
        kept = []
        for ch in text:
            category = unicodedata.category(ch)
            if category.startswith("L"):
                ok = unicodedata.name(ch, "").startswith(prefixes)
            else:  # digits, punctuation, symbols, spaces: ASCII ones only for a Latin target
                ok = ch.isascii() or "CJK" in prefixes
            kept.append(ch if ok else " ")
        text = "".join(kept)
    return " ".join(text.split())


def _is_ours(path: Path) -> bool:
    return (path / CACHE_FILE).is_file() or (path / SUMMARY_FILE).is_file()


def translate_dataset(
    data: str | Path,
    out: str | Path,
    captioner: Captioner,
    *,
    target: str = "en",
    what: tuple[str, ...] = WHAT,
    format: str | None = None,
    split: str | None = None,
    images: str | Path | None = None,
    captions: str | Path | None = None,
    prompt: str | None = None,
    partial: bool = False,
    drop_foreign: bool = True,
    drop_empty: bool = True,
    drop_duplicates: bool = True,
    drop_uncaptioned: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Translate, clean and write one split; returns the summary (also ``out/translate.json``).

    Args:
        data, format, split, images: the data set, as for :func:`load_dataset`.
        out: the output directory (new, empty, or an earlier translate run's).
        captioner: from :func:`xmr.models.captioners.create_captioner`.
        target: the target language code (``en``, ``zh``, ...).
        what: which texts to translate: ``queries``, ``captions`` or both.
        captions: a ``captions.jsonl`` of ``xmr caption`` whose captions join the items first.
        prompt: the request template, with ``{text}`` and optionally ``{language}``.
        partial: send nothing; write from what the cache holds now.
        drop_foreign, drop_empty, drop_duplicates, drop_uncaptioned: the cleaning steps above.
        progress: show a progress bar.
    """
    started = time.monotonic()
    unknown = set(what) - set(WHAT)
    if unknown or not what:
        raise XmrError(f"what: choose from {', '.join(WHAT)} (got {', '.join(what) or 'none'})")
    template = DEFAULT_PROMPT if prompt is None else prompt
    if "{text}" not in template:
        raise XmrError("the translation prompt must contain {text}")
    filled = template.replace("{language}", LANGUAGES.get(target, target))
    out = prepare_output_dir(out, is_ours=_is_ours, what="an xmr translate directory")
    dataset = load_dataset(data, format, split, images=images, captions=captions)
    chosen = dataset.split(split)
    texts: dict[str, str] = {}  # text -> kind of its first use
    if "queries" in what:
        texts.update((q.text, "query") for q in chosen.queries.values() if q.text not in texts)
    if "captions" in what:
        for item in chosen.items.values():
            texts.update((c, "caption") for c in item.captions if c not in texts)
    prompt_sha = sha256_text(filled)
    jobs = []
    for text, kind in texts.items():
        digest = sha256_text(text)
        key = cache_key(digest, captioner.model, prompt_sha, captioner.params)
        request = CaptionRequest(key, filled.replace("{text}", text))
        fields = {"text_sha256": digest, "kind": kind, "source": text}
        jobs.append(AnswerJob(key, request, [digest], prompt_sha, fields))
    out.mkdir(parents=True, exist_ok=True)
    with AnswerCache(
        out / CACHE_FILE, content_field="text_sha256", answer_field="translation"
    ) as cache:
        stats = answer_missing(
            captioner, jobs, cache, send=not partial, progress=progress, desc="translations"
        )
        answers = {job.fields["source"]: cache.answer(job.key) for job in jobs}

    def convert(text: str) -> str | None:
        answer = answers.get(text, text)
        if answer is None:
            return None
        return clean_script(answer, target) if drop_foreign else " ".join(answer.split())

    result, dropped = _clean_split(
        chosen, convert, set(what), drop_empty, drop_duplicates, drop_uncaptioned
    )
    copy = RetrievalDataset(format=dataset.format, root=dataset.root, splits={result.name: result})
    written: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        from xmr.data.convert import convert_dataset

        written.update(convert_dataset(copy, "beir", tmp, copy_images=False))

    atomic_replace_dir(
        out / DATASET_DIR, fill, may_replace=lambda p: (p / "corpus.jsonl").is_file()
    )
    counts = stats.to_dict()
    counts["translated"] = counts.pop("captioned")
    summary = {
        "dataset": str(data),
        "model": captioner.model,
        "task": "translate",
        "target": target,
        "what": list(what),
        "split": chosen.name,
        "texts": len(jobs),
        **counts,
        "dropped": dropped,
        "items": written.get("n_items"),
        "queries": written.get("n_queries"),
        "save_path": str(out / DATASET_DIR),
    }
    summary["wall_s"] = round(time.monotonic() - started, 3)
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def _clean_split(split: Split, convert, what, drop_empty, drop_duplicates, drop_uncaptioned):
    dropped = {
        "failed_queries": 0,
        "empty_queries": 0,
        "duplicate_queries": 0,
        "failed_captions": 0,
        "empty_captions": 0,
        "duplicate_captions": 0,
        "uncaptioned_items": 0,
    }
    result = Split(split.name, item_names=dict(split.item_names))
    for iid, item in split.items.items():
        captions: list[str] = []
        for caption in item.captions:
            text = convert(caption) if "captions" in what else caption
            if text is None:
                dropped["failed_captions"] += 1
            elif not text and drop_empty:
                dropped["empty_captions"] += 1
            elif drop_duplicates and text in captions:
                dropped["duplicate_captions"] += 1
            else:
                captions.append(text)
        if not captions and drop_uncaptioned:
            dropped["uncaptioned_items"] += 1
            continue
        result.items[iid] = Item(iid, item.image, captions, item.attribute, item.category)
    first_with_text: dict[str, str] = {}
    for qid, query in split.queries.items():
        text = convert(query.text) if "queries" in what else query.text
        if text is None:
            dropped["failed_queries"] += 1
            continue
        if not text and drop_empty:
            dropped["empty_queries"] += 1
            continue
        relevant = set(split.relevance.get(qid, ())) & result.items.keys()
        if drop_duplicates and text in first_with_text:
            dropped["duplicate_queries"] += 1
            result.relevance.setdefault(first_with_text[text], set()).update(relevant)
            continue
        first_with_text[text] = qid
        result.queries[qid] = Query(qid, text, query.category)
        if qid in split.relevance:
            result.relevance[qid] = relevant
    return result, dropped
