"""The embeddings directory's manifest: each kind's inputs and their hash, a new run's manifest,
and whether an earlier run in the directory can be resumed by this one (same model, decoding,
precision, vectors per input and input list)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.encode.multimodal import DESCRIPTION, KIND, multimodal_inputs
from xmr.encode.store import FORMAT, FORMAT_VERSION, IMAGE_KINDS, KINDS, kind_vectors
from xmr.errors import ModelMismatchError, XmrError
from xmr.io.provenance import now, xmr_version

# What to do about an embeddings directory that cannot be resumed (callers word it their way).
REDO_HINT = "use another --out or --overwrite"


def split_inputs(split, kind: str) -> tuple[list[str], list[Any]]:
    """(ids, inputs) of ``kind`` in the split's order: ImageRefs for images, (ImageRef, first
    caption or None) for multimodal items, strings otherwise."""
    if kind == KIND:
        return multimodal_inputs(split)
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
        if isinstance(x, tuple):  # a multimodal item: its image and its caption (JSON: exact)
            source = f"{_source(x[0])}\t{json.dumps(x[1], ensure_ascii=False)}"
        else:
            source = _source(x)
        h.update(f"{id_}\t{source}\n".encode())
    return h.hexdigest()


def _source(x: Any) -> str:
    if isinstance(x, str):
        return x
    if x.data is not None:
        return hashlib.sha256(x.data).hexdigest()
    return f"{x.describe()}@{x.offset}"


def draft_size_for(preprocess) -> tuple[int, int] | None:
    """The (width, height) JPEG draft mode may decode down to and keep what the resize keeps."""
    from dataclasses import replace

    return replace(preprocess, draft=True).draft_size if preprocess is not None else None


def new_manifest(encoder, split, work, shard_size, draft, source) -> dict[str, Any]:
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
                **({"vectors": image_vectors} if kind in IMAGE_KINDS and image_vectors > 1 else {}),
                **(_multimodal_entry(inputs) if kind == KIND else {}),
            }
            for kind, (ids, inputs) in work.items()
        },
    }


def _multimodal_entry(inputs: list[Any]) -> dict[str, Any]:
    """What a multimodal kind's rows are, and how many are an image alone (no caption)."""
    return {"items": DESCRIPTION, "image_only": sum(caption is None for _, caption in inputs)}


def check_resumable(
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
    changed = _preprocess_changes(om, nm)
    if changed:
        raise XmrError(
            f"{out} was encoded with other preprocessing ({'; '.join(changed)}): embeddings of "
            f"other pixels or token lengths are not mixed; {redo}"
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


def _preprocess_changes(old_model: dict[str, Any], new_model: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each preprocessing setting two runs differ in (draft is checked
    on its own; an absent ``backend`` is pil, as manifests before it were; any other key only
    one side records, an older manifest's gap, is not a change)."""

    def settings(model: dict[str, Any]) -> dict[str, Any]:
        pre = {k: v for k, v in (model.get("preprocess") or {}).items() if k != "draft"}
        if pre:
            pre.setdefault("backend", "pil")
        return pre

    old, new = settings(old_model), settings(new_model)
    if not old or not new:
        return []
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) & set(new))
        if old[key] != new[key]
    ]
