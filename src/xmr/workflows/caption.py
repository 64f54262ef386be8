"""``xmr caption``: caption every image of a split with a vision LLM (or a local captioner),
resumably, and write the text retrieval set evalscope's conversion writes (seed 003).

Layout of ``out``::

    captions.jsonl           the answer cache, one line per item as each answer arrives
                             (see :mod:`xmr.workflows.answer_cache`)
    retrieval_data/          corpus.jsonl, queries.jsonl, qrels/test.tsv
                             (see :mod:`xmr.workflows.caption_outputs`)
    image_caption.json       the summary: dataset, model, task, counts, tokens, save_path
    dataset/                 with ``dataset_copy=True``: the split as a BEIR set whose corpus
                             lines carry the image and its caption (``xmr data convert --to beir``)

A re-run of the same job sends only what is missing or failed; items with byte-identical images
share one request. The outputs are written when the run completes (without the items whose
caption failed, counted in the summary), or, with ``partial=True``, from what the cache holds
now without sending anything.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.data.readers import load_dataset
from xmr.errors import DataError, XmrError
from xmr.io import atomic_replace_dir, atomic_write_json, prepare_output_dir
from xmr.models.captioners import (
    DEFAULT_CAPTION_PROMPT,
    Captioner,
    CaptionRequest,
    cache_key,
    sha256_text,
)
from xmr.workflows.answer_cache import AnswerCache, AnswerJob, answer_missing
from xmr.workflows.caption_outputs import write_retrieval_data

CACHE_FILE = "captions.jsonl"
SUMMARY_FILE = "image_caption.json"
DATASET_DIR = "dataset"


@dataclass
class CaptionSummary:
    """What a caption run did and wrote (also ``out/image_caption.json``)."""

    dataset: str
    model: str
    split: str
    items: int
    stats: dict[str, Any]
    retrieval: dict[str, Any]
    unreadable: list[str] = field(default_factory=list)
    dataset_copy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "task": "image_caption",
            "split": self.split,
            "items": self.items,
            **self.stats,
            "unreadable_images": len(self.unreadable),
            "retrieval": self.retrieval,
            "save_path": self.retrieval.get("save_path"),
            "dataset_copy": self.dataset_copy,
        }


def _is_caption_dir(path: Path) -> bool:
    return (path / CACHE_FILE).is_file() or (path / SUMMARY_FILE).is_file()


def caption_jobs(
    split, captioner: Captioner, prompt: str, *, limit: int | None = None
) -> tuple[list[AnswerJob], list[str]]:
    """One job per distinct image (items with identical bytes share it) and the messages of
    the images that could not be read."""
    prompt_sha = sha256_text(prompt)
    jobs: dict[str, AnswerJob] = {}
    unreadable: list[str] = []
    items = [it for it in split.items.values() if it.image is not None]
    for item in items[:limit] if limit is not None else items:
        try:
            digest = hashlib.sha256(item.image.read_bytes()).hexdigest()
        except DataError as exc:
            unreadable.append(f"{item.id}: {exc}")
            continue
        key = cache_key(digest, captioner.model, prompt_sha, captioner.params)
        if key in jobs:
            jobs[key].ids.append(item.id)
        else:
            request = CaptionRequest(key, prompt, item.image)
            jobs[key] = AnswerJob(key, request, [item.id], prompt_sha, {"image_sha256": digest})
    return list(jobs.values()), unreadable


def caption_dataset(
    data: str | Path,
    out: str | Path,
    captioner: Captioner,
    *,
    format: str | None = None,
    split: str | None = None,
    images: str | Path | None = None,
    prompt: str | None = None,
    limit: int | None = None,
    ids: str = "dataset",
    partial: bool = False,
    dataset_copy: bool = False,
    progress: bool = True,
) -> CaptionSummary:
    """Caption the images of one split and write the BEIR text retrieval set.

    Args:
        data: the data set (any format a reader reads).
        out: the output directory (new, empty, or an earlier caption run's).
        captioner: from :func:`xmr.models.captioners.create_captioner`.
        format, split, images: as for :func:`xmr.data.readers.load_dataset`.
        prompt: the user text sent with each image (default: evalscope's).
        limit: caption only the first ``limit`` images of the split.
        ids: ``"dataset"`` (the data set's own ids, which cannot collide) or ``"evalscope"``
            (evalscope's 0, 1, ... numbering); see :mod:`xmr.workflows.caption_outputs`.
        partial: send nothing; write the outputs from what the cache holds now.
        dataset_copy: also write ``out/dataset``, the split with its captions, as a BEIR set.
        progress: show a progress bar (stderr).
    """
    started = time.monotonic()
    if limit is not None and limit < 1:
        raise XmrError("limit must be >= 1")
    prompt = DEFAULT_CAPTION_PROMPT if prompt is None else prompt
    if not prompt.strip():
        raise XmrError("the prompt is empty")
    out = prepare_output_dir(out, is_ours=_is_caption_dir, what="an xmr caption directory")
    dataset = load_dataset(data, format, split, images=images)
    chosen = dataset.split(split)
    jobs, unreadable = caption_jobs(chosen, captioner, prompt, limit=limit)
    if not jobs and not unreadable:
        raise XmrError(f"{data}: split '{chosen.name}' has no images to caption")
    out.mkdir(parents=True, exist_ok=True)
    with AnswerCache(
        out / CACHE_FILE, content_field="image_sha256", answer_field="caption"
    ) as cache:
        stats = answer_missing(captioner, jobs, cache, send=not partial, progress=progress)
        captions = {item_id: cache.answer(job.key) for job in jobs for item_id in job.ids}
    captions = {k: v for k, v in captions.items() if v}
    stats.failed += len(unreadable)
    stats.failures[:0] = unreadable[:5]
    retrieval = write_retrieval_data(out, chosen, captions, ids=ids)
    copy_path = _write_dataset_copy(out, chosen, dataset, captions) if dataset_copy else None
    stats.wall_s = time.monotonic() - started
    summary = CaptionSummary(
        dataset=str(data),
        model=captioner.model,
        split=chosen.name,
        items=sum(len(j.ids) for j in jobs) + len(unreadable),
        stats=stats.to_dict(),
        retrieval=retrieval,
        unreadable=unreadable,
        dataset_copy=copy_path,
    )
    atomic_write_json(out / SUMMARY_FILE, summary.to_dict())
    return summary


def _write_dataset_copy(out: Path, split, dataset, captions: dict[str, str]) -> str:
    from xmr.data.convert import convert_dataset
    from xmr.data.dataset import RetrievalDataset, Split

    items = {iid: item for iid, item in split.items.items() if iid in captions}
    copy = Split(split.name, queries=split.queries)
    for iid, item in items.items():
        texts = list(dict.fromkeys([*item.captions, captions[iid]]))
        copy.items[iid] = type(item)(iid, item.image, texts, item.attribute, item.category)
    copy.relevance = {q: rel & items.keys() for q, rel in split.relevance.items()}
    copy_ds = RetrievalDataset(format=dataset.format, root=dataset.root, splits={split.name: copy})
    dest = out / DATASET_DIR

    def fill(tmp: Path) -> None:
        convert_dataset(copy_ds, "beir", tmp, copy_images=False)

    atomic_replace_dir(dest, fill, may_replace=lambda p: (p / "corpus.jsonl").is_file())
    return str(dest)


__all__ = ["CaptionSummary", "caption_dataset", "caption_jobs"]
