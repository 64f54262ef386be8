"""Index an embeddings directory written by ``xmr encode`` (what ``xmr index build/add`` call)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xmr.encode import load_embeddings, load_metadata, read_manifest
from xmr.errors import XmrError
from xmr.fusion import (
    DEFAULT_FUSION_WEIGHT,
    MULTIMODAL,
    fused_embeddings,
    fusion_digest,
    load_fusion,
    multimodal_items,
)
from xmr.index.building import build_index
from xmr.index.layout import check_replaceable
from xmr.index.opening import is_lexical, open_index
from xmr.index.store import Index
from xmr.io.atomic import check_output_dir
from xmr.workflows.job_inputs import BLIP2_FUSED

log = logging.getLogger(__name__)


def default_kind(emb_dir: str | Path) -> str:
    """The kind to index: item images when encoded, else item captions (text corpora)."""

    kinds = read_manifest(emb_dir).get("kinds") or {}
    for kind in ("images", "captions"):
        if kinds.get(kind, {}).get("count"):
            return kind
    raise XmrError(
        f"{emb_dir}: holds no item embeddings to index (encoded: {', '.join(kinds) or 'none'}); "
        "encode images or captions first"
    )


def _records(emb_dir: Path, kind: str, ids: list[str]) -> list[dict[str, Any]]:

    meta = load_metadata(emb_dir, kind)
    return [meta.get(i, {"id": i}) for i in ids]


def _load_vectors(emb_dir: Path, kind: str, fusion: Any):
    """One kind's embeddings; ``fused`` combines images and captions with ``fusion`` (a weight,
    a learned fusion or its directory; see :mod:`xmr.fusion`)."""

    if kind == "fused":
        return fused_embeddings(emb_dir, DEFAULT_FUSION_WEIGHT if fusion is None else fusion)
    if kind == MULTIMODAL:  # BLIP-2's image+caption items (and caption-only items), as evaluated
        return multimodal_items(emb_dir)
    return load_embeddings(emb_dir, kind)


def _index_fusion(source: dict[str, Any]) -> Any:
    """The fusion an index was built with, for adding items the same way: its weight, or the
    learned fusion found again at its recorded path (with the same contents)."""
    info = source.get("fusion") or {}
    if source.get("fusion_weight") is not None or not info.get("path"):
        return source.get("fusion_weight")

    path = Path(info["path"])
    if not path.is_dir() or fusion_digest(path) != info.get("sha256"):
        raise XmrError(
            f"the index was built with the learned fusion in {path}, which is gone or has "
            "changed since; rebuild the index (xmr index build --fused DIR)"
        )
    return load_fusion(path)


def _fusion_source(fusion: dict[str, Any]) -> dict[str, Any]:
    if fusion.get("kind", "weighted") == "weighted":
        return {"fusion_weight": fusion["weight"], "fusion": fusion}
    return {"fusion": fusion}


def index_embeddings(
    emb_dir: str | Path,
    out_dir: str | Path | None = None,
    spec: str = "auto",
    *,
    kind: str | None = None,
    **options: Any,
) -> Index:
    """Build an index over the ``kind`` vectors of ``emb_dir`` (default: images) and save it to
    ``out_dir`` when given. The query texts encoded beside them, if any, measure the recall of an
    approximate index. ``options`` go to :func:`xmr.workflows.index_build_index`."""

    emb_dir = Path(emb_dir)
    if options.get("backend") == "milvus":
        options["backend_options"] = milvus_options(
            out_dir, uri=options.pop("uri", None), collection=options.pop("collection", None)
        )
    elif options.pop("uri", None) or options.pop("collection", None):
        raise XmrError("uri= and collection= are options of the milvus backend (backend=milvus)")
    fusion = options.pop("fusion", None)
    weight = options.pop("fusion_weight", None)
    fusion = weight if fusion is None else fusion
    if fusion == BLIP2_FUSED:  # BLIP-2's multimodal items (xmr encode --kinds multimodal)
        if kind not in (None, MULTIMODAL):
            raise XmrError(
                f"fusion={BLIP2_FUSED!r} indexes the {MULTIMODAL} items, not kind={kind}"
            )
        fusion, kind = None, MULTIMODAL
    kind = "fused" if fusion is not None else kind or default_kind(emb_dir)
    emb = _load_vectors(emb_dir, kind, fusion)
    if len(emb) == 0:
        raise XmrError(f"{emb_dir}: no {kind} vectors to index")
    manifest = emb.manifest
    if (
        kind != "texts"
        and "texts" in (manifest.get("kinds") or {})
        and "recall_queries" not in options
    ):
        try:
            queries = load_embeddings(emb_dir, "texts")
            if len(queries):
                options["recall_queries"] = queries.vectors
                options["recall_query_source"] = "texts"
        except XmrError as exc:
            log.warning("not using the query texts for recall: %s", exc)
    index = build_index(
        emb.vectors,
        emb.ids,
        spec,
        items=_records(emb_dir, kind, emb.ids),
        model=emb.model,
        source={
            "embeddings": str(emb_dir.resolve()),
            "kind": kind,
            "data": manifest.get("source"),
            "split": manifest.get("split"),
            "precision": manifest.get("precision"),
            "preprocessing": manifest.get("preprocessing"),
            **(_fusion_source(manifest["fusion"]) if kind in ("fused", MULTIMODAL) else {}),
        },
        **options,
    )
    if out_dir is not None:
        index.save(out_dir)
    return index


def milvus_options(
    out_dir: str | Path | None, *, uri: str | None = None, collection: str | None = None
) -> dict[str, Any]:
    """Where a Milvus build goes: the server at ``uri``, or a milvus-lite database
    ``OUT_DIR/milvus.db``; the collection is ``collection`` (default: ``xmr_items`` on lite,
    ``xmr_<OUT_DIR's name>`` on a server, so that two index directories do not share one)."""
    from xmr.index.milvus_backend import DEFAULT_COLLECTION, LITE_FILE, collection_for

    if uri is None:
        if out_dir is None:
            raise XmrError("a milvus-lite index lives in its index directory: give out_dir")
        out = Path(out_dir)
        check_replaceable(out, "milvus", keep=[out / LITE_FILE])
        return {"lite_path": out / LITE_FILE, "collection": collection or DEFAULT_COLLECTION}
    if out_dir is not None:
        check_replaceable(Path(out_dir), "milvus")
    default = collection_for(out_dir) if out_dir is not None else DEFAULT_COLLECTION
    return {"uri": uri, "collection": collection or default}


def delete_items(
    index: Index | str | Path,
    ids: list[str],
    *,
    missing_ok: bool = False,
    save: bool = True,
) -> tuple[Index, list[str]]:
    """``xmr index delete``: remove items (vector, id, metadata) by id from an index of any
    backend (FAISS, Milvus, BM25: its documents re-scored); returns (index, ids deleted). An
    unknown id is an error unless ``missing_ok``. The index directory is saved atomically when
    ``save`` (see :meth:`Index.save`)."""
    if not hasattr(index, "remove"):
        index = open_index(index)
    if not ids:
        raise XmrError("give at least one item id to delete")
    removed = index.remove(ids, missing_ok=missing_ok)
    if save and removed:
        index.save()
    return index, removed


def add_texts(
    index: Any,
    data: Any,
    *,
    format: str | None = None,
    split: str | None = None,
    upsert: bool = False,
    save: bool = True,
) -> tuple[Any, int]:
    """``xmr index add INDEX --data PATH``: add the items of a data set split (their captions,
    as :func:`index_texts` indexes them) to a BM25 index; returns (index, n added). BM25 has no
    vectors to append: the whole corpus is re-scored, so the result equals a build over the
    larger corpus. An id already there is an error unless ``upsert``; items without text are
    left out (logged). Saved atomically when ``save``."""
    from xmr.data.records import item_record

    if not is_lexical(index):
        index = open_index(index)
    if not is_lexical(index):
        raise XmrError(
            f"{index.path}: a vector index takes embeddings (xmr index add INDEX EMB_DIR), "
            "not data=; encode the new items with its model first"
        )
    _, _, items = _text_items(data, format, split, "add")
    added = index.add([item_record(it) for it in items], upsert=upsert)
    if save:
        index.save()
    return index, added


def add_embeddings(
    index: Index | str | Path,
    emb_dir: str | Path,
    *,
    kind: str | None = None,
    save: bool = True,
    upsert: bool = False,
) -> tuple[Index, int]:
    """Append the vectors of ``emb_dir`` to an index without a rebuild; returns (index, n added).

    The embeddings must come from the model that built the index (ModelMismatchError otherwise)
    and bring only new ids, unless ``upsert``: then items already there are replaced. The index
    directory is saved atomically when ``save``.
    """

    if not isinstance(index, Index):
        index = open_index(index)
    if is_lexical(index):
        raise XmrError(
            f"{index.path}: a BM25 index takes texts, not embeddings: add the items of a data "
            "set with data= (xmr index add INDEX --data PATH)"
        )
    emb_dir = Path(emb_dir)
    source = index.manifest.get("source") or {}
    built = source.get("kind")
    kind = kind or built or default_kind(emb_dir)
    if MULTIMODAL in (built, kind) and kind != built:
        # BLIP-2 multimodal items and other vectors (image only, captions) are not mixed
        raise XmrError(
            f"the index holds {built or 'images'} items, these would be {kind} vectors: a "
            f"{MULTIMODAL} index (BLIP-2's image + caption items) takes the {MULTIMODAL} items "
            f"of an encoding with kinds={MULTIMODAL} by its BLIP-2 model"
        )
    emb = _load_vectors(emb_dir, kind, _index_fusion(source) if kind == "fused" else None)
    adding = (getattr(emb, "manifest", None) or {}).get("preprocessing")
    _check_same_decoding(source.get("preprocessing"), adding, emb_dir)
    index.add(
        emb.vectors, emb.ids, _records(emb_dir, kind, emb.ids), model=emb.model, upsert=upsert
    )
    if save:
        index.save()
    return index, len(emb)


def index_texts(
    data: Any,
    out_dir: str | Path | None = None,
    spec: str = "bm25",
    *,
    format: str | None = None,
    split: str | None = None,
) -> Any:
    """``xmr index build --model bm25 --data PATH``: a BM25 index over the items of a data set
    (their captions joined; a BEIR corpus's title + text), saved to ``out_dir`` when given.

    Every item with text is indexed, with its metadata record (image, captions, category), so
    ``xmr search`` and ``xmr serve`` show the same results as from a vector index. Items
    without a caption have no text to match and are left out (counted in the log)."""
    from xmr.data.records import document_text, item_record
    from xmr.index.bm25_index import build_bm25_index

    if out_dir is not None:
        check_output_dir(out_dir)
    dataset, chosen, items = _text_items(data, format, split, "index")
    index = build_bm25_index(
        [document_text(it.captions) for it in items],
        [it.id for it in items],
        spec,
        items=[item_record(it) for it in items],
        source={"data": str(getattr(dataset, "root", data)), "format": dataset.format,
                "split": chosen.name, "skipped_without_text": len(chosen.items) - len(items)},
    )  # fmt: skip
    if out_dir is not None:
        index.save(out_dir)
    return index


def _text_items(data: Any, format: str | None, split: str | None, what: str):
    """(dataset, split, its items with text) for a BM25 index: items without a caption have
    no text to match and are left out (counted in the log)."""
    from xmr.data.readers import load_dataset

    dataset = data if hasattr(data, "splits") else load_dataset(data, format, split)
    chosen = dataset.split(split)
    items = [it for it in chosen.items.values() if it.captions]
    if not items:
        raise XmrError(
            f"{data}: split '{chosen.name}' has no item with a caption or text to {what}"
        )
    if len(items) < len(chosen.items):
        log.warning("bm25: %d item(s) without text left out", len(chosen.items) - len(items))
    return dataset, chosen, items


def _check_same_decoding(built: Any, adding: Any, emb_dir: Path) -> None:
    """Refuse to mix draft-decoded (``--draft``) and fully decoded image embeddings."""
    was = bool((built or {}).get("jpeg_draft"))
    now = bool((adding or {}).get("jpeg_draft"))
    if built is not None and adding is not None and was != now:
        said = {True: "with draft JPEG decoding (--draft)", False: "with full decoding"}
        raise XmrError(
            f"{emb_dir} was encoded {said[now]}, the index {said[was]}: draft and full-decode "
            "embeddings are not mixed in one index; encode again with the index's setting"
        )
