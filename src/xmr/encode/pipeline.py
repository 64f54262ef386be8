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

Batches never straddle a shard, and a shard is written as soon as its last batch is in
(:mod:`xmr.encode.kind_run`); the manifest and the resume checks are in :mod:`xmr.encode.manifest`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xmr.data.records import item_record
from xmr.encode.engines import EngineOptions, open_engine, run_remote
from xmr.encode.kind_run import KindRun, KindSummary
from xmr.encode.loader import LoaderChoice, choose_loader
from xmr.encode.manifest import REDO_HINT, check_resumable, new_manifest, split_inputs
from xmr.encode.multimodal import KIND as MULTIMODAL
from xmr.encode.multimodal import require_item_encoder
from xmr.encode.store import (
    ITEMS_FILE,
    KINDS,
    MANIFEST,
    QUERIES_FILE,
    check_out_dir,
    clear,
    read_manifest,
    write_failed,
)
from xmr.errors import XmrError
from xmr.io.atomic import atomic_write, atomic_write_json, ensure_parent
from xmr.io.jsonio import write_jsonl
from xmr.io.provenance import now

DEFAULT_SHARD_SIZE = 4096


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
        kinds: any of ``images`` (item images), ``texts`` (query texts, ids = query ids),
            ``captions`` (each item's first caption, ids = item ids) and ``multimodal`` (each
            item with an image: the encoder's ``encode_items(image, first caption)``, K vectors,
            ids = item ids; an item without a caption: its image vectors; see
            :mod:`xmr.encode.multimodal`; needs an encoder with ``encode_items``, e.g. BLIP-2).
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
    if MULTIMODAL in kinds:  # refused before anything is written
        require_item_encoder(encoder)
    if precision is not None:
        from xmr.models.base import resolve_precision

        encoder.precision = resolve_precision(precision, encoder.device)
    out = Path(out_dir)
    if overwrite and out.is_dir():
        clear(out)
    check_out_dir(out)
    ensure_parent(out / MANIFEST)

    work = {kind: split_inputs(split, kind) for kind in dict.fromkeys(kinds)}
    manifest = new_manifest(encoder, split, work, shard_size, draft, source)
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        check_resumable(old, manifest, out, redo_hint or REDO_HINT)
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
            kind: KindRun(encoder, out, kind, ids, inputs, manifest["kinds"][kind], manifest["dim"])
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
