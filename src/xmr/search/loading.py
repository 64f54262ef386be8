"""Opening what a Searcher searches: an index directory (vector or BM25), a BM25 index beside
it, and the encoder the index names, with query images decoded as the index's images were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.index import BM25Index, Index, is_lexical, open_index
from xmr.models import create_encoder, enable_text_runtime, with_image_backend


def load_search_parts(
    index_dir: str | Path,
    device: str | None = "cpu",
    model: Any = None,
    *,
    precision: str = "fp32",
    gpu: bool | None = None,
    bm25_index: str | Path | None = None,
    draft: bool | None = None,
    runtime: str = "eager",
) -> tuple[Index | BM25Index, Any, BM25Index | None]:
    """The index in ``index_dir``, its encoder and the BM25 index ``bm25_index`` (encoder and
    lexical index None for a BM25 index directory): what
    :meth:`xmr.search.Searcher.from_index_dir` is built from; the arguments are its own."""
    index = open_index(index_dir, gpu=gpu)
    if is_lexical(index):
        if bm25_index is not None:
            raise XmrError(f"{index_dir} is a BM25 index already; bm25_index is for a vector one")
        return index, None, None
    lexical = open_index(bm25_index) if bm25_index is not None else None
    if lexical is not None and not is_lexical(lexical):
        raise XmrError(f"{bm25_index}: not a BM25 index (build it with model=bm25)")
    if model is None or isinstance(model, str | Path):
        spec = str(model) if model is not None else (index.model or {}).get("spec")
        if not spec:
            raise XmrError(f"{index_dir}: the index names no model; pass one (model=...)")
        wanted = query_draft(index, index_dir, draft)
        try:
            encoder = create_encoder(
                spec, device=device, precision=precision, draft=wanted, runtime=runtime,
                image_backend=index_image_backend(index),
            )  # fmt: skip
        except XmrError as exc:
            if model is not None:
                raise
            raise XmrError(
                f"cannot load the model the index was built with ({exc}); pass a copy of it "
                "as the model"
            ) from None
    else:
        encoder = with_draft(model, query_draft(index, index_dir, draft))
        backend = index_image_backend(index)
        if getattr(getattr(encoder, "preprocess", None), "backend", backend) != backend:
            import copy

            encoder = with_image_backend(copy.copy(encoder), backend)  # the caller's unchanged
        if runtime != "eager" and getattr(encoder, "text_runtime", None) is None:
            enable_text_runtime(encoder, runtime)
    return index, encoder, lexical


def index_draft(index: Index) -> bool:
    """Whether the index's images were decoded in JPEG draft mode (``--draft``): its
    ``source.preprocessing.jpeg_draft``, else its model manifest's ``preprocess.draft``."""
    preprocessing = ((index.manifest or {}).get("source") or {}).get("preprocessing") or {}
    if "jpeg_draft" in preprocessing:
        return bool(preprocessing["jpeg_draft"])
    return bool(((index.model or {}).get("preprocess") or {}).get("draft", False))


def index_image_backend(index: Index) -> str:
    """The image-processor backend the index's images were preprocessed with (its model
    manifest's ``preprocess.backend``; absent means pil): query images follow it."""
    return str(((index.model or {}).get("preprocess") or {}).get("backend", "pil"))


def query_draft(index: Index, index_dir: Any, draft: bool | None) -> bool:
    """The query images' decoding: the index's, and an explicit other setting is an error."""
    built = index_draft(index)
    if draft is None or bool(draft) == built:
        return built
    said = {True: "with draft JPEG decoding (--draft)", False: "with full decoding (--no-draft)"}
    raise XmrError(
        f"{index_dir}: the index's images were decoded {said[built]}; query images must be "
        f"decoded the same way, not {said[bool(draft)]} (leave the setting out to follow "
        "the index)"
    )


def with_draft(encoder: Any, draft: bool) -> Any:
    """``encoder`` decoding query images with ``draft``: a shallow copy sharing the model when
    it must change (the caller's encoder is left as it was)."""
    preprocess = getattr(encoder, "preprocess", None)
    if preprocess is None or bool(getattr(preprocess, "draft", False)) == draft:
        return encoder
    import copy
    from dataclasses import replace

    encoder = copy.copy(encoder)
    encoder.preprocess = replace(preprocess, draft=draft)
    return encoder
