"""The resumable answer cache of ``xmr caption`` / ``xmr translate``: one JSON line per answer.

Every finished answer is appended and flushed at once, so a kill at any moment loses at most the
requests in flight. A record (``captions.jsonl``)::

    {"id", "image_sha256", "caption", "model", "prompt_sha256", "params",
     "usage": {"prompt_tokens", "completion_tokens"}, "latency_s", "error"}

(``translations.jsonl`` has ``text_sha256`` and ``translation`` instead, plus ``kind`` and
``source``.) An answer's identity is the content sha256 + model + prompt sha256 + params
(:func:`xmr.models.captioners.cache_key`), so another model, prompt or parameters caches
separately in the same file. The last record of a key wins: a failure followed by a success is a
success. A line cut short by a kill (no final newline) is dropped on open; any other bad line is
a DataError naming the file and the line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.errors import DataError
from xmr.models.captioners import (
    Captioner,
    CaptionRequest,
    CaptionResult,
    GenerationParams,
    cache_key,
)


def record_key(record: dict[str, Any], content_field: str) -> str:
    params = GenerationParams(**record["params"])
    return cache_key(record[content_field], record["model"], record["prompt_sha256"], params)


class AnswerCache:
    """``path``'s records, by key (the last record of a key wins); :meth:`append` adds one."""

    def __init__(self, path: str | Path, *, content_field: str, answer_field: str) -> None:
        self.path = Path(path)
        self.content_field = content_field
        self.answer_field = answer_field
        self.records: dict[str, dict[str, Any]] = {}
        self._fh = None
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A killed writer's half line: drop it now so the next append starts a fresh line.
            cut = raw.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            raw = raw[:cut]
        where = str(self.path)
        for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record_key(record, self.content_field)
            except json.JSONDecodeError as exc:
                raise DataError(f"bad JSON ({exc.msg})", file=where, line=lineno) from None
            except (KeyError, TypeError) as exc:
                raise DataError(
                    f"not an answer record (missing or bad {exc})", file=where, line=lineno
                ) from None
            self.records[key] = record

    def answer(self, key: str) -> str | None:
        """The cached answer for ``key``, or None when there is none or it failed."""
        record = self.records.get(key)
        if record is None or record.get("error"):
            return None
        return record.get(self.answer_field) or None

    def append(self, key: str, record: dict[str, Any]) -> None:
        """Write one record and flush it to the OS (it survives the process being killed)."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.records[key] = record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class AnswerJob:
    """One request to send (or find cached) and the items / texts that share its answer."""

    key: str
    request: CaptionRequest
    ids: list[str]
    prompt_sha256: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunStats:
    """What a run did, counted in items (ids): answered now, found cached, failed, and (a run
    that sends nothing) missing from the cache."""

    answered: int = 0
    cached: int = 0
    failed: int = 0
    missing: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum: float = 0.0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def mean_latency_s(self) -> float | None:
        return self.latency_sum / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        mean = self.mean_latency_s
        return {
            "captioned": self.answered,
            "cached": self.cached,
            "failed": self.failed,
            "missing": self.missing,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "mean_latency_s": None if mean is None else round(mean, 4),
            "wall_s": round(self.wall_s, 3),
            "failure_examples": self.failures[:5],
        }


def answer_missing(
    captioner: Captioner,
    jobs: list[AnswerJob],
    cache: AnswerCache,
    *,
    send: bool = True,
    progress: bool = True,
    desc: str = "captions",
) -> RunStats:
    """Send the jobs the cache has no answer for (all of them unless ``send`` is False) and
    append every answer to the cache as it arrives. Returns the counts."""
    from tqdm import tqdm

    started = time.monotonic()
    stats = RunStats()
    todo = []
    for job in jobs:
        if cache.answer(job.key) is not None:
            stats.cached += len(job.ids)
        else:
            todo.append(job)
    if not send:
        stats.missing = sum(len(j.ids) for j in todo)
        stats.wall_s = time.monotonic() - started
        return stats
    by_key = {job.key: job for job in todo}
    params = captioner.params.to_dict()
    bar = tqdm(total=len(todo), desc=desc, unit="req", disable=not progress or not todo)

    def on_result(result: CaptionResult) -> None:
        job = by_key[result.key]
        stats.requests += 1
        stats.latency_sum += result.latency_s
        stats.prompt_tokens += result.usage.get("prompt_tokens", 0)
        stats.completion_tokens += result.usage.get("completion_tokens", 0)
        if result.ok:
            stats.answered += len(job.ids)
        else:
            stats.failed += len(job.ids)
            if len(stats.failures) < 20:
                stats.failures.append(f"{job.ids[0]}: {result.error}")
        for item_id in job.ids:
            record = {"id": item_id, **job.fields, cache.answer_field: result.text}
            record.update(
                model=captioner.model,
                prompt_sha256=job.prompt_sha256,
                params=params,
                usage=result.usage,
                latency_s=round(result.latency_s, 4),
                error=result.error,
            )
            cache.append(job.key, record)
        bar.update(1)
        bar.set_postfix(
            tokens=stats.prompt_tokens + stats.completion_tokens, failed=stats.failed, refresh=False
        )

    try:
        captioner.run([job.request for job in todo], on_result)
    finally:
        bar.close()
        stats.wall_s = time.monotonic() - started
    return stats
