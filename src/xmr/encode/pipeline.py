"""``encode_split``: DataLoader workers decode and crop, the model runs batched.

The data path, built to keep an accelerator fed:

* workers (``torch.utils.data.DataLoader`` processes) decode each image in full (JPEG draft mode
  only with ``draft=True``) and resize + centre-crop it with the model's exact processor geometry
  into a uint8 array (``ImagePreprocess.crop``); no float work happens in a worker;
* batches are stacked as uint8 (a quarter of float32's bytes), pinned when the device is CUDA,
  copied with ``non_blocking=True`` and rescaled + normalised on the device in the processor's
  order (``ImagePreprocess.normalize``), then the model runs under ``inference_mode`` and the
  encoder's autocast precision;
* each worker prefetches at most ``PREFETCH_PER_WORKER`` batches (a bounded queue);
* worker count and batch size default to a choice made from the machine (``choose_loader``),
  reported in the summary together with throughput and the share of time the model waited for
  data, so a user sees whether the data path or the model is the bottleneck.

Batches never straddle a shard, and a shard is written as soon as its last batch is in.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.loading import ImageDataset, collate_images, worker_init
from xmr.data.records import item_record
from xmr.encode.engines import EngineOptions, open_engine, run_remote
from xmr.encode.loader import LoaderChoice, choose_loader
from xmr.encode.store import (
    FORMAT,
    FORMAT_VERSION,
    ITEMS_FILE,
    KINDS,
    MANIFEST,
    QUERIES_FILE,
    check_out_dir,
    clear,
    kind_vectors,
    read_manifest,
    read_shard,
    shard_failures,
    shard_path,
    shard_ranges,
    vector_shape,
    write_failed,
    write_shard,
)
from xmr.errors import ModelMismatchError, XmrError
from xmr.io.atomic import atomic_write, atomic_write_json, ensure_parent
from xmr.io.jsonio import write_jsonl
from xmr.io.provenance import now, xmr_version

DEFAULT_SHARD_SIZE = 4096
SHOW_FAILURES = 5
# Batches each worker may hold ready: enough to ride out a slow image, and a bound on memory
# (the float32 batches of 4 per worker were what made encode peak well above a plain loop).
PREFETCH_PER_WORKER = 2


# What to do about an embeddings directory that cannot be resumed (callers word it their way).
REDO_HINT = "use another --out or --overwrite"


@dataclass
class KindSummary:
    """What one kind's encoding did: inputs, vectors written, failures, shards reused, speed."""

    kind: str
    count: int
    encoded: int = 0
    failed: int = 0
    shards: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    items_per_s: float = 0.0
    data_wait_s: float = 0.0
    data_wait_share: float = 0.0
    first_failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class EncodeSummary:
    out_dir: str
    kinds: dict[str, KindSummary]
    loader: LoaderChoice | None = None
    engine: dict[str, Any] = field(default_factory=lambda: {"engine": "local"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "engine": self.engine,
            "loader": asdict(self.loader) if self.loader else None,
            "kinds": {k: asdict(v) for k, v in self.kinds.items()},
        }


# --- inputs ------------------------------------------------------------------------------------


def split_inputs(split, kind: str) -> tuple[list[str], list[Any]]:
    """(ids, inputs) of ``kind`` in the split's order: ImageRefs for images, strings otherwise."""
    if kind == "images":
        pairs = [(i.id, i.image) for i in split.items.values() if i.image is not None]
    elif kind == "texts":
        pairs = [(q.id, q.text) for q in split.queries.values()]
    elif kind == "captions":
        pairs = [(i.id, i.captions[0]) for i in split.items.values() if i.captions]
    else:
        raise XmrError(f"unknown embedding kind '{kind}' (choose from {', '.join(KINDS)})")
    return [str(p[0]) for p in pairs], [p[1] for p in pairs]


def inputs_hash(ids: Sequence[str], inputs: Sequence[Any]) -> str:
    """Identifies the input list: a resumed run must see exactly the same one."""
    h = hashlib.sha256()
    for id_, x in zip(ids, inputs, strict=True):
        if isinstance(x, str):
            source = x
        elif x.data is not None:
            source = hashlib.sha256(x.data).hexdigest()
        else:
            source = f"{x.describe()}@{x.offset}"
        h.update(f"{id_}\t{source}\n".encode())
    return h.hexdigest()


def draft_size_for(preprocess) -> tuple[int, int] | None:
    """The (width, height) JPEG draft mode may decode down to and keep what the resize keeps."""
    from dataclasses import replace

    return replace(preprocess, draft=True).draft_size if preprocess is not None else None


# --- encoding ----------------------------------------------------------------------------------


def encode_split(
    encoder,
    split,
    out_dir: str | Path,
    *,
    batch_size: int | None = 64,
    workers: int | None = 0,
    kinds: Sequence[str] = ("images", "texts"),
    shard_size: int = DEFAULT_SHARD_SIZE,
    precision: str | None = None,
    draft: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    redo_hint: str | None = None,
    engine: str = "local",
    engine_options: EngineOptions | None = None,
) -> EncodeSummary:
    """Encode a split's images and texts into resumable embedding shards under ``out_dir``.

    Args:
        encoder: an :class:`xmr.models.Encoder` (``create_encoder(spec, device=...)``).
        split: an :class:`xmr.data.Split`.
        out_dir: the embeddings directory (created; an earlier run there is resumed).
        batch_size: inputs per forward pass (None: chosen from the device, see
            :func:`choose_loader`).
        workers: DataLoader processes decoding and cropping images (0: in this process;
            None: chosen from the machine).
        kinds: any of ``images`` (item images), ``texts`` (query texts, ids = query ids) and
            ``captions`` (each item's first caption, ids = item ids).
        shard_size: inputs per shard, the unit of resumption.
        precision: ``fp32``/``fp16``/``bf16`` autocast (default: the encoder's).
        draft: let JPEGs decode at reduced scale when at least twice the model's input size
            (faster, not the reference processor's pixels; recorded in the manifest, and an
            earlier run with the other setting is refused). None: the encoder's
            ``preprocess.draft`` (False unless the model was loaded with ``draft=True``).
        overwrite: discard what ``out_dir`` holds instead of resuming.
        source: where the split came from (path, format, split), recorded in the manifest.
        on_batch: called as ``on_batch(kind, n_done)`` after every batch (progress hooks, tests).
        redo_hint: what the error about an unresumable ``out_dir`` tells the user to do.
        engine: ``local`` (DataLoader workers and the model in this process) or ``ray``
            (decoding tasks and model actors on a Ray cluster, see :mod:`xmr.encode.ray_engine`):
            the same shards, manifest, failure list and resumption either way.
        engine_options: the Ray address, actor count and GPUs per actor
            (:class:`xmr.encode.engines.EngineOptions`).

    Returns:
        An :class:`EncodeSummary`: counts, speed and the first undecodable images.
    """
    if shard_size <= 0 or (batch_size is not None and batch_size <= 0):
        raise XmrError("batch size and shard size must be positive")
    if workers is not None and workers < 0:
        raise XmrError(f"workers must be >= 0 (0: decode in this process), got {workers}")
    loader = choose_loader(encoder.device, workers, batch_size)
    if draft is None:
        draft = bool(getattr(encoder.preprocess, "draft", False))
    if isinstance(kinds, str) or not kinds:
        raise XmrError(f"kinds: name what to encode, a list from {', '.join(KINDS)}")
    if precision is not None:
        from xmr.models.base import resolve_precision

        encoder.precision = resolve_precision(precision, encoder.device)
    out = Path(out_dir)
    if overwrite and out.is_dir():
        clear(out)
    check_out_dir(out)
    ensure_parent(out / MANIFEST)

    work = {kind: split_inputs(split, kind) for kind in dict.fromkeys(kinds)}
    manifest = _new_manifest(encoder, split, work, shard_size, draft, source)
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        _check_resumable(old, manifest, out, redo_hint or REDO_HINT)
        manifest["created"] = old.get("created", manifest["created"])
        manifest["kinds"] = {**old.get("kinds", {}), **manifest["kinds"]}
    atomic_write_json(out / MANIFEST, manifest)
    records = [item_record(it) for it in split.items.values()]
    atomic_write(out / ITEMS_FILE, lambda tmp: write_jsonl(tmp, records))
    queries = [{"id": q.id, "text": q.text, "category": q.category} for q in split.queries.values()]
    atomic_write(out / QUERIES_FILE, lambda tmp: write_jsonl(tmp, queries))

    summaries: dict[str, KindSummary] = {}
    # Opened after the resume checks: a refused run starts no cluster.
    remote = open_engine(engine, encoder, engine_options)
    try:
        runs = {
            kind: _KindRun(
                encoder, out, kind, ids, inputs, manifest["kinds"][kind], manifest["dim"]
            )
            for kind, (ids, inputs) in work.items()
        }
        if remote is not None:  # one pipeline (one model load per actor) for every kind
            run_remote(remote, runs, loader.batch_size, draft, progress, on_batch)
        for kind, run in runs.items():
            summary = summaries[kind] = (
                run.end() if remote is not None
                else run.encode(loader.batch_size, loader.workers, draft, progress, on_batch)
            )  # fmt: skip
            manifest["kinds"][kind].update(
                complete=True, encoded=summary.encoded, failed=summary.failed
            )
            manifest["updated"] = now()
            atomic_write_json(out / MANIFEST, manifest)
        described = remote.describe() if remote is not None else {"engine": "local"}
    finally:
        if remote is not None:
            remote.close()
    write_failed(out, manifest)
    return EncodeSummary(str(out), summaries, loader, described)


def _new_manifest(encoder, split, work, shard_size, draft, source) -> dict[str, Any]:
    model = encoder.manifest()
    # The model entry says how this run decoded, whatever the encoder was loaded with.
    preprocess = {k: v for k, v in model.get("preprocess", {}).items() if k != "draft"}
    model["preprocess"] = {**preprocess, **({"draft": True} if draft else {})}
    # Vectors per image: K for a multi-vector encoder (its shards hold [m, K, dim]), else 1.
    image_vectors = int(model.get("image_vectors", getattr(encoder, "image_vectors", 1)) or 1)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xmr_version": xmr_version(),
        "created": now(),
        "updated": now(),
        "model": model,
        "dim": int(model["embed_dim"]),
        "image_vectors": image_vectors,
        "precision": encoder.precision,
        "draft": bool(draft),
        "preprocessing": {**model.get("preprocess", {}), "jpeg_draft": bool(draft)},
        "source": source,
        "split": getattr(split, "name", None),
        "kinds": {
            kind: {
                "count": len(ids),
                "shard_size": int(shard_size),
                "n_shards": math.ceil(len(ids) / shard_size),
                "inputs_hash": inputs_hash(ids, inputs),
                "complete": False,
                **({"vectors": image_vectors} if kind == "images" and image_vectors > 1 else {}),
            }
            for kind, (ids, inputs) in work.items()
        },
    }


def _check_resumable(
    old: dict[str, Any], new: dict[str, Any], out: Path, redo: str = REDO_HINT
) -> None:
    om, nm = old.get("model") or {}, new["model"]
    if om.get("fingerprint") != nm.get("fingerprint"):
        raise ModelMismatchError(
            f"{out} holds embeddings of model {om.get('spec')!r} (fingerprint "
            f"{om.get('fingerprint')}), not {nm.get('spec')!r}; {redo}"
        )
    if bool(old.get("draft")) != bool(new.get("draft")):
        said = {True: "with draft JPEG decoding (--draft)", False: "without draft decoding"}
        raise XmrError(
            f"{out} was encoded {said[bool(old.get('draft'))]}, this run asks for "
            f"{'it' if new.get('draft') else 'full decoding'}: draft and full-decode embeddings "
            f"are not mixed; {redo}"
        )
    if old.get("precision") != new.get("precision"):
        raise XmrError(
            f"{out} was encoded with precision={old.get('precision')!r}, this run asks for "
            f"{new.get('precision')!r}; {redo}"
        )
    for kind, info in new["kinds"].items():
        prev = (old.get("kinds") or {}).get(kind)
        if prev and kind_vectors(prev) != kind_vectors(info):
            raise XmrError(
                f"{out}: the {kind} there hold {kind_vectors(prev)} vector(s) each, this run "
                f"makes {kind_vectors(info)}; {redo}"
            )
        if prev and (prev["inputs_hash"], prev["shard_size"]) != (
            info["inputs_hash"],
            info["shard_size"],
        ):
            raise XmrError(
                f"{out}: the {kind} there were encoded from a different list of inputs (another "
                f"data set or split, or another --shard-size); {redo}"
            )


class _KindRun:
    """Encodes the pending shards of one kind, collecting each shard's batches until it is whole."""

    def __init__(self, encoder, out: Path, kind: str, ids, inputs, info, dim: int) -> None:
        self.encoder, self.out, self.kind = encoder, out, kind
        self.ids, self.inputs, self.info, self.dim = ids, inputs, info, int(dim)
        self.shape = vector_shape(self.dim, kind_vectors(info))  # one input's embedding
        self.summary = KindSummary(kind, len(ids), shards=info["n_shards"])
        self.pending: dict[int, tuple[int, int]] = {}
        self.buffers: dict[int, dict[str, list]] = {}

    def encode(self, batch_size, workers, draft, progress, on_batch) -> KindSummary:
        self.begin(progress)
        try:
            for batch in self._batches(batch_size, workers, draft):
                self.take(batch, on_batch)
        finally:
            self.close_bar()
        return self.end()

    def begin(self, progress: bool) -> None:
        """Find the finished shards; start the clock and the progress bar."""
        (self.out / self.kind).mkdir(exist_ok=True)
        for stale in (self.out / self.kind).glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a temporary shard left by a killed run
        self._scan_finished()
        s = self.summary
        self.done_before = s.count - sum(end - start for start, end in self.pending.values())
        self.bar = _progress_bar(progress, s.count, self.done_before, self.kind)
        self.started, self.done_now, self.waited = time.perf_counter(), 0, 0.0

    def take(self, batch, on_batch) -> None:
        """One encoded batch: (shard, ok positions, vectors, [(position, error)])."""
        shard, positions, vectors, failed = batch
        self._collect(shard, positions, vectors, failed)
        self.done_now += len(positions) + len(failed)
        if self.bar is not None:
            self.bar.update(len(positions) + len(failed))
        if on_batch is not None:
            on_batch(self.kind, self.done_before + self.done_now)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def end(self) -> KindSummary:
        s, done_now = self.summary, self.done_now
        s.first_failures = s.first_failures[:SHOW_FAILURES]
        s.seconds = round(time.perf_counter() - self.started, 3)
        s.items_per_s = round(done_now / s.seconds, 2) if s.seconds > 0 else 0.0
        s.data_wait_s = round(self.waited, 3)
        s.data_wait_share = round(self.waited / s.seconds, 3) if s.seconds > 0 else 0.0
        if self.kind == "images" and s.count and s.failed == s.count:
            first = s.first_failures[0]["error"] if s.first_failures else "?"
            raise XmrError(f"none of the {s.count} images could be decoded (first: {first})")
        if self.pending:  # an engine that lost a batch must not leave a manifest saying complete
            raise XmrError(f"{self.kind}: {len(self.pending)} shard(s) were not encoded")
        return s

    def plan(self, batch_size: int) -> list[tuple[int, list[int]]]:
        """(shard, input positions) of every batch still to encode; none straddles a shard."""
        return [
            (shard, list(range(b, min(end, b + batch_size))))
            for shard, (start, end) in self.pending.items()
            for b in range(start, end, batch_size)
        ]

    def _scan_finished(self) -> None:
        for i, start, end in shard_ranges(self.info):
            data = read_shard(
                shard_path(self.out, self.kind, i),
                start=start,
                end=end,
                inputs_hash=self.info["inputs_hash"],
                dim=self.dim,
                vectors=kind_vectors(self.info),
            )
            if data is None:
                self.pending[i] = (start, end)
            else:
                self.summary.shards_reused += 1
                self.summary.encoded += len(data["ids"])
                self.summary.failed += len(data["failed_ids"])
                self.summary.first_failures.extend(shard_failures(data)[:SHOW_FAILURES])

    def _batches(self, batch_size: int, workers: int, draft: bool):
        """Yield (shard, ok positions, vectors, [(position, error)]) in input order."""
        plan = self.plan(batch_size)
        if not plan:
            return
        if self.kind != "images":
            # A text model with separate query / document prompts (st:) encodes corpus
            # captions as documents; CLIP-family encoders have one text tower for both.
            encode = self.encoder.encode_texts
            if self.kind == "captions":
                encode = getattr(self.encoder, "encode_documents", encode)
            for shard, positions in plan:
                texts = [self.inputs[p] for p in positions]
                vectors = encode(texts, batch_size=len(texts))
                yield shard, positions, np.asarray(vectors, dtype=np.float32), []
            return
        from dataclasses import replace

        from torch.utils.data import DataLoader

        preprocess = replace(self.encoder.preprocess, draft=bool(draft))
        loader = DataLoader(
            ImageDataset(self.inputs, preprocess.crop),
            batch_sampler=[positions for _, positions in plan],
            num_workers=int(workers),
            collate_fn=collate_images,
            pin_memory=self.encoder.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            prefetch_factor=PREFETCH_PER_WORKER if workers else None,
        )
        batches = iter(loader if workers else _single_threaded(loader))
        for shard, _ in plan:
            waiting = time.perf_counter()
            positions, pixels, failed = next(batches)
            self.waited += time.perf_counter() - waiting
            if pixels is None:
                vectors = np.zeros((0, *self.shape), np.float32)
            else:  # uint8 crops: normalised on the device inside encode_images
                vectors = self.encoder.encode_images(pixels, batch_size=len(positions))
            yield shard, positions, np.asarray(vectors, dtype=np.float32), failed

    def _collect(self, shard: int, positions, vectors, failed) -> None:
        buf = self.buffers.setdefault(shard, {"pos": [], "vec": [], "failed": []})
        buf["pos"].extend(positions)
        buf["vec"].append(vectors)
        buf["failed"].extend((self.ids[p], err) for p, err in failed)
        start, end = self.pending[shard]
        if len(buf["pos"]) + len(buf["failed"]) < end - start:
            return
        order = np.argsort(buf["pos"], kind="stable")
        vecs = np.concatenate(buf["vec"]).reshape(-1, *self.shape)[order]
        write_shard(
            shard_path(self.out, self.kind, shard),
            vectors=vecs,
            ids=[self.ids[buf["pos"][j]] for j in order],
            start=start,
            end=end,
            inputs_hash=self.info["inputs_hash"],
            failed=buf["failed"],
        )
        self.summary.encoded += len(buf["pos"])
        self.summary.failed += len(buf["failed"])
        self.summary.first_failures.extend(
            {"id": fid, "error": err} for fid, err in buf["failed"][:SHOW_FAILURES]
        )
        del self.buffers[shard], self.pending[shard]


def _single_threaded(loader):
    """Iterate an in-process DataLoader with one torch thread while it decodes and preprocesses:
    per-image tensor ops are too small to split, and splitting them costs 5x on a busy machine.
    The model then runs with all threads again."""
    import torch

    threads = torch.get_num_threads()
    batches = iter(loader)
    while True:
        torch.set_num_threads(1)
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield batch


def _progress_bar(progress: bool, total: int, initial: int, kind: str):
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    unit = "img" if kind == "images" else "text"
    return tqdm(
        total=total, initial=initial, unit=unit, desc=f"encoding {kind}", dynamic_ncols=True
    )
