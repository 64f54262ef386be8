"""The embeddings directory on disk: manifest, shards, metadata; reading it back.

Shard ``i`` of a kind covers the fixed input positions ``[i*shard_size, (i+1)*shard_size)`` and
holds ``embeddings`` (float32 ``[m, dim]``, or ``[m, K, dim]`` for a multi-vector kind: the
images of a multi-vector encoder such as BLIP-2, and its ``multimodal`` items (image + first
caption, :mod:`xmr.encode.multimodal`), whose K is the kind's ``vectors`` in the manifest and
the model's ``image_vectors``; absent means 1, so older directories read as before), ``ids``, its ``start``/``end``, the hash of the whole
input list, and the ids and errors of the inputs that failed. A shard is valid only when all of
that matches the manifest, so a truncated or foreign shard is simply encoded again.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write
from xmr.io.jsonio import read_json, read_jsonl, write_jsonl
from xmr.io.outdirs import prepare_output_dir

log = logging.getLogger(__name__)

FORMAT = "xmr-embeddings"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS_FILE = "items.jsonl"
QUERIES_FILE = "queries.jsonl"
FAILED_FILE = "failed.jsonl"
KINDS = ("images", "texts", "captions", "multimodal")
# The kinds whose inputs are images, decoded by the DataLoader workers and K vectors each.
IMAGE_KINDS = ("images", "multimodal")


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

    @property
    def vectors_per_input(self) -> int:
        """K of a multi-vector kind (``vectors`` is ``[n, K, dim]``), else 1."""
        return int(self.vectors.shape[1]) if self.vectors.ndim == 3 else 1


def shard_path(out: Path, kind: str, i: int) -> Path:
    return out / kind / f"{i:05d}.npz"


def shard_ranges(info: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(shard number, start, end) of every shard of a kind."""
    n, size = int(info["count"]), int(info["shard_size"])
    return [(i, i * size, min(n, (i + 1) * size)) for i in range(int(info["n_shards"]))]


def kind_vectors(info: dict[str, Any]) -> int:
    """Vectors per input of a kind's manifest entry (1 when it does not say: older manifests)."""
    return int(info.get("vectors", 1) or 1)


def vector_shape(dim: int, vectors: int = 1) -> tuple[int, ...]:
    """The shape of one input's embedding: ``(dim,)``, or ``(vectors, dim)`` when several."""
    return (int(vectors), int(dim)) if int(vectors) > 1 else (int(dim),)


def write_shard(path: Path, *, vectors, ids, start, end, inputs_hash, failed) -> None:
    """Write one shard atomically; ``failed`` is a list of (id, error). ``vectors`` is
    ``[m, dim]`` or, for multi-vector inputs, ``[m, K, dim]`` (kept as it is)."""
    arr = np.asarray(vectors, dtype=np.float32)
    arr = arr.reshape(len(ids), *arr.shape[1:]) if arr.ndim >= 2 else arr.reshape(len(ids), -1)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                embeddings=arr,
                ids=np.asarray(ids, dtype=np.str_),
                start=np.int64(start),
                end=np.int64(end),
                inputs_hash=np.str_(inputs_hash),
                failed_ids=np.asarray([f[0] for f in failed], dtype=np.str_),
                failed_errors=np.asarray([f[1] for f in failed], dtype=np.str_),
            )

    atomic_write(path, write)


def read_shard(
    path: Path, *, start: int, end: int, inputs_hash: str, dim: int, vectors: int = 1
) -> dict | None:
    """The shard's arrays, or None when it is missing, corrupt, made from other inputs or of
    another shape (``vectors`` per input of ``dim``)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # truncated zip, bad header, ...: it gets encoded again
        log.warning("%s: unreadable shard (%s); re-encoding it", path, exc)
        return None
    try:
        ok = (
            int(data["start"]) == start
            and int(data["end"]) == end
            and str(data["inputs_hash"]) == inputs_hash
            and data["embeddings"].shape == (len(data["ids"]), *vector_shape(dim, vectors))
            and len(data["ids"]) + len(data["failed_ids"]) == end - start
        )
    except KeyError:
        ok = False
    if not ok:
        log.warning("%s: shard does not match this run; re-encoding it", path)
        return None
    return data


def shard_failures(data: dict) -> list[dict[str, str]]:
    ids, errors = data["failed_ids"], data["failed_errors"]
    return [{"id": str(i), "error": str(e)} for i, e in zip(ids, errors, strict=True)]


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of an embeddings directory (an error names what is wrong)."""
    path = Path(out_dir) / MANIFEST
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise XmrError(f"{out_dir}: is a file, not an xmr embeddings directory")
    if not path.exists():
        raise XmrError(f"{out_dir}: no {MANIFEST} (not an xmr embeddings directory)")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise XmrError(f"{out_dir}: not an xmr embeddings directory")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise XmrError(f"{out_dir}: embeddings format {manifest['format_version']} is too new")
    return manifest


def write_failed(out: Path, manifest: dict[str, Any]) -> None:
    """Gather every shard's failures into failed.jsonl (the shards are the source of truth)."""
    records = []
    for kind, info in manifest["kinds"].items():
        for i, _, _ in shard_ranges(info):
            path = shard_path(out, kind, i)
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    records.extend({"kind": kind, **f} for f in shard_failures(z))
    if records or (out / FAILED_FILE).exists():
        atomic_write(out / FAILED_FILE, lambda tmp: write_jsonl(tmp, records))


def check_out_dir(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a directory holding something other than an earlier
    encoding (a data set or a model given as ``--out`` by mistake)."""
    prepare_output_dir(
        out, is_ours=lambda d: (d / MANIFEST).exists(), what="an xmr embeddings directory"
    )


def clear(out: Path) -> None:
    """Delete what an earlier encoding wrote into ``out`` (refusing a directory not ours)."""
    if (out / MANIFEST).exists():
        read_manifest(out)
    elif any(out.iterdir()):
        raise XmrError(f"{out}: exists and is not an xmr embeddings directory; not overwriting it")
    for kind in KINDS:
        shutil.rmtree(out / kind, ignore_errors=True)
    for name in (MANIFEST, ITEMS_FILE, QUERIES_FILE, FAILED_FILE):
        (out / name).unlink(missing_ok=True)


def load_embeddings(out_dir: str | Path, kind: str = "images") -> Embeddings:
    """Concatenate the shards of ``kind``: ``vectors`` is ``[n, dim]``, or ``[n, K, dim]`` for a
    multi-vector kind; an unfinished encoding is an error saying so."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    info = (manifest.get("kinds") or {}).get(kind)
    if info is None:
        have = ", ".join(manifest.get("kinds") or {}) or "none"
        raise XmrError(f"{out}: no {kind} embeddings (encoded: {have})")
    dim = int(manifest["dim"])
    shape = vector_shape(dim, kind_vectors(info))
    ids: list[str] = []
    parts: list[np.ndarray] = []
    missing = 0
    for i, start, end in shard_ranges(info):
        data = read_shard(
            shard_path(out, kind, i),
            start=start,
            end=end,
            inputs_hash=info["inputs_hash"],
            dim=dim,
            vectors=kind_vectors(info),
        )
        if data is None:
            missing += 1
            continue
        ids.extend(str(x) for x in data["ids"])
        parts.append(data["embeddings"])
    if missing:
        raise XmrError(
            f"{out}: the {kind} encoding is unfinished ({missing} of {info['n_shards']} shards "
            "missing); re-run the same `xmr encode` command to finish it"
        )
    vectors = np.concatenate(parts) if parts else np.zeros((0, *shape), np.float32)
    return Embeddings(kind, ids, vectors, manifest)


def load_metadata(out_dir: str | Path, kind: str = "images") -> dict[str, dict[str, Any]]:
    """id -> metadata record for the vectors of ``kind`` (the items, or the queries for texts)."""
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
