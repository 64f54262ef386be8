"""Batched, resumable encoding of a data set split into embedding shards.

Layout of an embeddings directory ``OUT``::

    OUT/manifest.json          model manifest, dimension, precision, preprocessing, per-kind counts
    OUT/items.jsonl            metadata of the split's items (so ``xmr index build OUT`` needs no data)
    OUT/queries.jsonl          the split's queries (id, text, category)
    OUT/images/00000.npz ...   shards: ``embeddings`` float32 [m, dim], ``ids``, range, hashes
    OUT/texts/00000.npz ...    query texts (ids = query ids)
    OUT/captions/00000.npz ... first caption of each item (ids = item ids), when asked for
    OUT/failed.jsonl           images that could not be decoded (id, source, error)

Shard ``i`` of a kind covers the fixed input positions ``[i*shard_size, (i+1)*shard_size)``, is
written atomically (temporary file, fsync, rename) and records the hash of the whole input list.
A killed run therefore leaves only whole shards, and a re-run skips every shard that is already
valid. Re-running with a different model, precision or item list is an error, not a silent mix.

Images are decoded (JPEG draft mode: big photos decode at 1/2..1/8 scale) and preprocessed in
``torch.utils.data.DataLoader`` workers; the model runs batched under ``inference_mode`` and the
encoder's autocast precision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import DataError, ModelMismatchError, XmrError
from xmr.index.atomic import atomic_write, atomic_write_json
from xmr.index.metadata import item_record, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

FORMAT = "xmr-embeddings"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS_FILE = "items.jsonl"
QUERIES_FILE = "queries.jsonl"
FAILED_FILE = "failed.jsonl"
KINDS = ("images", "texts", "captions")
DEFAULT_SHARD_SIZE = 4096
SHOW_FAILURES = 5


@dataclass
class KindSummary:
    """What one kind's encoding did: inputs, vectors written, failures, shards reused."""

    kind: str
    count: int
    encoded: int = 0
    failed: int = 0
    shards: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    items_per_s: float = 0.0
    first_failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class EncodeSummary:
    out_dir: str
    kinds: dict[str, KindSummary]

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "kinds": {k: asdict(v) for k, v in self.kinds.items()}}


@dataclass
class Embeddings:
    """One kind's vectors, concatenated from its shards in input order (failed inputs left out)."""

    kind: str
    ids: list[str]
    vectors: np.ndarray
    manifest: dict[str, Any]

    @property
    def model(self) -> dict[str, Any] | None:
        return self.manifest.get("model")

    def __len__(self) -> int:
        return len(self.ids)


# --- the inputs of each kind -------------------------------------------------------------------


def _inputs(split, kind: str) -> tuple[list[str], list[Any]]:
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


def _inputs_hash(ids: Sequence[str], inputs: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for id_, x in zip(ids, inputs, strict=True):
        if isinstance(x, str):
            source = x
        elif x.data is not None:
            source = hashlib.sha256(x.data).hexdigest()
        else:
            source = x.describe() + f"@{x.offset}"
        h.update(f"{id_}\t{source}\n".encode())
    return h.hexdigest()


def draft_size_for(preprocess) -> tuple[int, int] | None:
    """The (width, height) JPEG draft mode may decode down to without losing what the resize keeps."""
    mode = getattr(preprocess, "mode", None)
    size = getattr(preprocess, "size", None)
    if mode == "shortest_edge" and size:
        return int(size), int(size)
    if mode == "resize" and size:
        h, w = (size, size) if isinstance(size, int) else size
        return int(w), int(h)
    return None


# --- DataLoader parts (module level: picklable for worker processes) ---------------------------


class ImageDataset:
    """Positions -> (position, preprocessed pixels or None, error or None); decoding never raises."""

    def __init__(self, refs: Sequence[Any], preprocess: Callable, draft_size=None) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, position: int):
        ref = self.refs[position]
        try:
            image = ref.open(draft_size=self.draft_size)
        except DataError as exc:
            return position, None, str(exc)
        try:
            return position, self.preprocess(image), None
        except Exception as exc:  # a corrupt image can still fail inside PIL's resize
            return position, None, f"{ref.describe()}: cannot preprocess ({exc})"


def collate_images(batch):
    from torch.utils.data import default_collate

    ok = [(p, x) for p, x, err in batch if err is None]
    failed = [(p, err) for p, _, err in batch if err is not None]
    pixels = default_collate([x for _, x in ok]) if ok else None
    return [p for p, _ in ok], pixels, failed


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers decode; one thread each avoids oversubscribing the cores


# --- shards ------------------------------------------------------------------------------------


def _shard_path(out: Path, kind: str, i: int) -> Path:
    return out / kind / f"{i:05d}.npz"


def _write_shard(path: Path, *, vectors, ids, start, end, inputs_hash, failed) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                embeddings=np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1),
                ids=np.asarray(ids, dtype=np.str_),
                start=np.int64(start),
                end=np.int64(end),
                inputs_hash=np.str_(inputs_hash),
                failed_ids=np.asarray([f[0] for f in failed], dtype=np.str_),
                failed_errors=np.asarray([f[1] for f in failed], dtype=np.str_),
            )

    atomic_write(path, write)


def _read_shard(path: Path, *, start: int, end: int, inputs_hash: str, dim: int) -> dict | None:
    """The shard's arrays, or None when it is missing, corrupt or from other inputs."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # truncated zip, bad header, ...: recompute it
        log.warning("%s: unreadable shard (%s); re-encoding it", path, exc)
        return None
    try:
        ok = (
            int(data["start"]) == start
            and int(data["end"]) == end
            and str(data["inputs_hash"]) == inputs_hash
            and data["embeddings"].shape == (len(data["ids"]), dim)
            and len(data["ids"]) + len(data["failed_ids"]) == end - start
        )
    except KeyError:
        ok = False
    if not ok:
        log.warning("%s: shard does not match this run; re-encoding it", path)
        return None
    return data


# --- the manifest ------------------------------------------------------------------------------


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XmrError(f"{out_dir}: no {MANIFEST} (not an xmr embeddings directory)") from None
    except json.JSONDecodeError as exc:
        raise XmrError(f"{path}: bad JSON ({exc.msg})") from None
    if manifest.get("format") != FORMAT:
        raise XmrError(f"{out_dir}: not an xmr embeddings directory")
    return manifest


def _check_resumable(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    om, nm = old.get("model") or {}, new["model"]
    if om.get("fingerprint") != nm.get("fingerprint"):
        raise ModelMismatchError(
            f"{out} holds embeddings of model {om.get('spec')!r} (fingerprint "
            f"{om.get('fingerprint')}), not {nm.get('spec')!r}; use another --out or --overwrite"
        )
    for key in ("precision", "draft"):
        if old.get(key) != new.get(key):
            raise XmrError(
                f"{out} was encoded with {key}={old.get(key)!r}, this run asks for "
                f"{new.get(key)!r}; use another --out or --overwrite"
            )
    for kind, info in new["kinds"].items():
        prev = (old.get("kinds") or {}).get(kind)
        if prev and (prev["inputs_hash"], prev["shard_size"]) != (
            info["inputs_hash"],
            info["shard_size"],
        ):
            raise XmrError(
                f"{out}: the {kind} there were encoded from a different list of inputs (another "
                "data set or split, or another --shard-size); use another --out or --overwrite"
            )


# --- encoding ----------------------------------------------------------------------------------


def encode_split(
    encoder,
    split,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    kinds: Sequence[str] = ("images", "texts"),
    shard_size: int = DEFAULT_SHARD_SIZE,
    precision: str | None = None,
    draft: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> EncodeSummary:
    """Encode a split's images and texts into resumable embedding shards under ``out_dir``.

    Args:
        encoder: an :class:`xmr.models.Encoder` (``create_encoder(spec, device=...)``).
        split: an :class:`xmr.data.Split`.
        out_dir: the embeddings directory (created; a previous run there is resumed).
        batch_size: inputs per forward pass.
        workers: DataLoader worker processes decoding and preprocessing images (0: in-process).
        kinds: any of ``images`` (item images), ``texts`` (query texts, ids = query ids) and
            ``captions`` (each item's first caption, ids = item ids).
        shard_size: inputs per shard (the unit of resumption).
        precision: ``fp32``/``fp16``/``bf16`` autocast (default: the encoder's).
        draft: let JPEGs decode at reduced scale when they are at least twice the model's size.
        overwrite: discard what ``out_dir`` holds instead of resuming.
        source: where the split came from (path, format, split), recorded in the manifest.
        on_batch: called as ``on_batch(kind, n_done)`` after every batch (progress hooks, tests).

    Returns:
        An :class:`EncodeSummary` with counts, speed and the first undecodable images.
    """
    if shard_size <= 0 or batch_size <= 0:
        raise XmrError("batch size and shard size must be positive")
    if precision is not None:
        from xmr.models.base import resolve_precision

        encoder.precision = resolve_precision(precision, encoder.device)
    out = Path(out_dir)
    if overwrite and out.exists():
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)

    work = {kind: _inputs(split, kind) for kind in dict.fromkeys(kinds)}
    model = encoder.manifest()
    dim = int(model["embed_dim"])
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xmr_version": _xmr_version(),
        "created": _now(),
        "updated": _now(),
        "model": model,
        "dim": dim,
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
                "inputs_hash": _inputs_hash(ids, inputs),
                "complete": False,
            }
            for kind, (ids, inputs) in work.items()
        },
    }
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        _check_resumable(old, manifest, out)
        manifest["created"] = old.get("created", manifest["created"])
        manifest["kinds"] = {**old.get("kinds", {}), **manifest["kinds"]}
    atomic_write_json(out / MANIFEST, manifest)
    atomic_write(
        out / ITEMS_FILE, lambda tmp: write_jsonl(tmp, map(item_record, split.items.values()))
    )
    queries = [{"id": q.id, "text": q.text, "category": q.category} for q in split.queries.values()]
    atomic_write(out / QUERIES_FILE, lambda tmp: write_jsonl(tmp, queries))

    summaries: dict[str, KindSummary] = {}
    for kind, (ids, inputs) in work.items():
        info = manifest["kinds"][kind]
        summary = _encode_kind(
            encoder,
            out,
            kind,
            ids,
            inputs,
            info,
            dim=dim,
            batch_size=batch_size,
            workers=workers,
            draft=draft,
            progress=progress,
            on_batch=on_batch,
        )
        info.update(complete=True, encoded=summary.encoded, failed=summary.failed)
        manifest["updated"] = _now()
        atomic_write_json(out / MANIFEST, manifest)
        summaries[kind] = summary
    _write_failed(out, manifest)
    return EncodeSummary(str(out), summaries)


def _encode_kind(
    encoder, out, kind, ids, inputs, info, *, dim, batch_size, workers, draft, progress, on_batch
) -> KindSummary:
    n, size = len(ids), info["shard_size"]
    (out / kind).mkdir(exist_ok=True)
    for stale in (out / kind).glob(".*.tmp"):
        stale.unlink(missing_ok=True)  # a temporary shard left by a killed run
    summary = KindSummary(kind, n, shards=info["n_shards"])
    ranges = [(i, i * size, min(n, (i + 1) * size)) for i in range(info["n_shards"])]
    pending = []
    for i, start, end in ranges:
        data = _read_shard(
            _shard_path(out, kind, i),
            start=start,
            end=end,
            inputs_hash=info["inputs_hash"],
            dim=dim,
        )
        if data is None:
            pending.append((i, start, end))
        else:
            summary.shards_reused += 1
            summary.encoded += len(data["ids"])
            summary.failed += len(data["failed_ids"])
            summary.first_failures.extend(_failures(data)[:SHOW_FAILURES])
    done_before = n - sum(end - start for _, start, end in pending)
    bar = _progress_bar(progress, n, done_before, kind)
    started = time.perf_counter()
    encoded_now = 0
    try:
        if kind == "images":
            batches = _image_batches(encoder, inputs, pending, batch_size, workers, draft)
        else:
            batches = _text_batches(encoder, inputs, pending, batch_size)
        buffers: dict[int, dict[str, list]] = {}
        for shard, positions, vectors, failed in batches:
            buf = buffers.setdefault(shard, {"pos": [], "vec": [], "failed": []})
            buf["pos"].extend(positions)
            buf["vec"].append(vectors)
            buf["failed"].extend((ids[p], inputs[p].describe(), err) for p, err in failed)
            encoded_now += len(positions) + len(failed)
            if bar is not None:
                bar.update(len(positions) + len(failed))
            _, start, end = next(r for r in pending if r[0] == shard)
            if len(buf["pos"]) + len(buf["failed"]) == end - start:
                order = np.argsort(buf["pos"], kind="stable")
                vecs = np.concatenate(buf["vec"]) if buf["vec"] else np.zeros((0, dim), np.float32)
                _write_shard(
                    _shard_path(out, kind, shard),
                    vectors=vecs[order].reshape(-1, dim),
                    ids=[ids[buf["pos"][j]] for j in order],
                    start=start,
                    end=end,
                    inputs_hash=info["inputs_hash"],
                    failed=[
                        (fid, f"{src}: {err}" if src not in err else err)
                        for fid, src, err in buf["failed"]
                    ],
                )
                summary.encoded += len(buf["pos"])
                summary.failed += len(buf["failed"])
                summary.first_failures.extend(
                    {"id": fid, "error": err} for fid, _, err in buf["failed"][:SHOW_FAILURES]
                )
                del buffers[shard]
            if on_batch is not None:
                on_batch(kind, done_before + encoded_now)
    finally:
        if bar is not None:
            bar.close()
    summary.first_failures = summary.first_failures[:SHOW_FAILURES]
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.items_per_s = round(encoded_now / summary.seconds, 2) if summary.seconds > 0 else 0.0
    if kind == "images" and n and summary.failed == n:
        first = summary.first_failures[0]["error"] if summary.first_failures else "?"
        raise XmrError(f"none of the {n} images could be decoded (first: {first})")
    return summary


def _image_batches(encoder, refs, pending, batch_size, workers, draft):
    """Yield (shard, ok positions, vectors, [(position, error)]) batch by batch, in order."""
    import torch
    from torch.utils.data import DataLoader

    batch_plan: list[list[int]] = []
    owners: list[int] = []
    for shard, start, end in pending:
        for b in range(start, end, batch_size):
            batch_plan.append(list(range(b, min(end, b + batch_size))))
            owners.append(shard)
    if not batch_plan:
        return
    dataset = ImageDataset(
        refs, encoder.preprocess, draft_size_for(encoder.preprocess) if draft else None
    )
    loader = DataLoader(
        dataset,
        batch_sampler=batch_plan,
        num_workers=int(workers),
        collate_fn=collate_images,
        pin_memory=encoder.device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )
    dim = int(encoder.embed_dim)
    for shard, (positions, pixels, failed) in zip(owners, loader, strict=True):
        if pixels is None:
            vectors = np.zeros((0, dim), np.float32)
        else:
            vectors = encoder.encode_images(pixels, batch_size=len(positions))
            if isinstance(vectors, torch.Tensor):
                vectors = vectors.cpu().numpy()
        yield shard, positions, np.asarray(vectors, dtype=np.float32), failed


def _text_batches(encoder, texts, pending, batch_size):
    for shard, start, end in pending:
        for b in range(start, end, batch_size):
            positions = list(range(b, min(end, b + batch_size)))
            vectors = encoder.encode_texts([texts[p] for p in positions], batch_size=len(positions))
            yield shard, positions, np.asarray(vectors, dtype=np.float32), []


def _progress_bar(progress: bool, total: int, initial: int, kind: str):
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    unit = {"images": "img", "texts": "text", "captions": "text"}[kind]
    return tqdm(
        total=total, initial=initial, unit=unit, desc=f"encoding {kind}", dynamic_ncols=True
    )


def _failures(data: dict) -> list[dict[str, str]]:
    return [
        {"id": str(i), "error": str(e)}
        for i, e in zip(data["failed_ids"], data["failed_errors"], strict=True)
    ]


def _write_failed(out: Path, manifest: dict[str, Any]) -> None:
    """Gather every shard's failures into failed.jsonl (shards are the source of truth)."""
    records = []
    for kind, info in manifest["kinds"].items():
        for i in range(info["n_shards"]):
            path = _shard_path(out, kind, i)
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    records.extend({"kind": kind, **f} for f in _failures(z))
    if records or (out / FAILED_FILE).exists():
        atomic_write(out / FAILED_FILE, lambda tmp: write_jsonl(tmp, records))


def _clear(out: Path) -> None:
    import shutil

    if (out / MANIFEST).exists():
        read_manifest(out)  # refuse to wipe a directory that is not ours
    elif any(out.iterdir()):
        raise XmrError(f"{out}: exists and is not an xmr embeddings directory; not overwriting it")
    for kind in KINDS:
        shutil.rmtree(out / kind, ignore_errors=True)
    for name in (MANIFEST, ITEMS_FILE, QUERIES_FILE, FAILED_FILE):
        (out / name).unlink(missing_ok=True)


# --- reading back ------------------------------------------------------------------------------


def load_embeddings(out_dir: str | Path, kind: str = "images") -> Embeddings:
    """Concatenate the shards of ``kind``; an unfinished encoding is an error saying so."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    info = (manifest.get("kinds") or {}).get(kind)
    if info is None:
        have = ", ".join(manifest.get("kinds") or {}) or "none"
        raise XmrError(f"{out}: no {kind} embeddings (encoded: {have})")
    dim = int(manifest["dim"])
    ids: list[str] = []
    parts: list[np.ndarray] = []
    missing = []
    n, size = info["count"], info["shard_size"]
    for i in range(info["n_shards"]):
        start, end = i * size, min(n, (i + 1) * size)
        data = _read_shard(
            _shard_path(out, kind, i),
            start=start,
            end=end,
            inputs_hash=info["inputs_hash"],
            dim=dim,
        )
        if data is None:
            missing.append(i)
            continue
        ids.extend(str(x) for x in data["ids"])
        parts.append(data["embeddings"])
    if missing:
        raise XmrError(
            f"{out}: the {kind} encoding is unfinished ({len(missing)} of {info['n_shards']} "
            "shards missing); re-run the same `xmr encode` command to finish it"
        )
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return Embeddings(kind, ids, vectors, manifest)


def load_metadata(out_dir: str | Path, kind: str = "images") -> dict[str, dict[str, Any]]:
    """id -> metadata record for the vectors of ``kind`` (items, or queries for ``texts``)."""
    out = Path(out_dir)
    if kind == "texts":
        path = out / QUERIES_FILE
        if not path.exists():
            return {}
        return {
            str(r["id"]): {
                "id": str(r["id"]),
                "image": None,
                "captions": [r.get("text", "")],
                "attribute": None,
                "category": r.get("category"),
            }
            for r in read_jsonl(path)
        }
    path = out / ITEMS_FILE
    return {str(r["id"]): r for r in read_jsonl(path)} if path.exists() else {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _xmr_version() -> str:
    from xmr import __version__

    return __version__
