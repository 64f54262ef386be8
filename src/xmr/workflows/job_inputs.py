"""What an evaluation or a prediction runs on, made ready the same way for both: the data set,
the bi-encoder and the cross-encoder from their specs, the checked options, the fusion, and the
split embedded through :func:`xmr.eval.embedded.embed_split` (the resumable ``xmr encode``
pipeline). Shared by :mod:`xmr.workflows.evaluate` and :mod:`xmr.workflows.predict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.eval.embedded import SplitEmbeddings, embed_split
from xmr.models import create_encoder, enable_text_runtime, with_image_backend
from xmr.models.cross_encoders import create_cross_encoder
from xmr.rerank import RERANK_MODES


def read_data(
    data: Any,
    format: str | None,
    split: str | None,
    skip_bad: bool = False,
    warnings: list[str] | None = None,
):
    """``data`` as a RetrievalDataset: a loaded one passes through, a path is read (with
    ``skip_bad``, malformed records are skipped, and the count goes to ``warnings``)."""
    if hasattr(data, "splits"):
        return data
    dataset = load_dataset(data, format, split, skip_bad=skip_bad)
    if warnings is not None and dataset.skipped_warning(data):
        warnings.append(dataset.skipped_warning(data))
    return dataset


def load_encoder(
    model: Any,
    device: Any,
    precision: str,
    draft: bool = False,
    runtime: str = "eager",
    image_backend: str | None = None,
):
    """A bi-encoder from a spec string (an encoder passes through; ``draft`` switches its JPEG
    draft decoding on, ``runtime="onnx"`` its ONNX text runtime, ``image_backend`` its
    preprocessing's backend)."""
    if isinstance(model, str):
        return create_encoder(
            model, device=device, precision=precision, draft=draft, runtime=runtime,
            image_backend=image_backend,
        )  # fmt: skip
    if image_backend is not None:
        with_image_backend(model, image_backend)
    if draft and not getattr(model.preprocess, "draft", False):
        from dataclasses import replace

        model.preprocess = replace(model.preprocess, draft=True)
    if runtime != "eager" and getattr(model, "text_runtime", None) is None:
        enable_text_runtime(model, runtime)
    return model


def load_reranker(rerank: Any, device: Any, precision: str):
    """A cross-encoder from a spec string (an instance passes through)."""
    if isinstance(rerank, str):
        return create_cross_encoder(rerank, device=device, precision=precision)
    return rerank


def check_rerank_options(rerank_k: int, rerank_mode: str, rerank_batch_size: int) -> None:
    if rerank_k < 1:
        raise XmrError(f"rerank_k must be at least 1, not {rerank_k}")
    if rerank_mode not in RERANK_MODES:
        raise XmrError(
            f"unknown rerank mode '{rerank_mode}' (choose from {', '.join(RERANK_MODES)})"
        )
    if rerank_batch_size < 1:
        raise XmrError(f"rerank_batch_size must be at least 1, not {rerank_batch_size}")


def check_k(k: int) -> None:
    if k < 1:
        raise XmrError(f"k must be at least 1, not {k}")


# ``fused="blip2"``: the side-by-side table with BLIP-2's multimodal items (weighted at w=0.5).
BLIP2_FUSED = "blip2"


def fusion_value(fused: Any, *, allow_tune: bool) -> Any:
    """A fusion given as text (a weight, ``tune``, ``blip2``, a directory) as what the
    evaluators take; a number or a Fusion passes through."""
    if not isinstance(fused, str):
        return fused
    if allow_tune and fused in ("tune", BLIP2_FUSED):
        return fused
    try:
        return float(fused)
    except ValueError:
        pass
    if not Path(fused).expanduser().exists():
        tune = ", 'tune'" if allow_tune else ""
        blip2 = f" or '{BLIP2_FUSED}' (BLIP-2's multimodal items)" if allow_tune else ""
        raise XmrError(
            f"fused must be a weight in [0, 1]{tune} or a learned fusion directory (fusion.json "
            f"and fusion.safetensors){blip2}, not {fused!r}"
        )
    return fused


def embed(
    encoder: Any,
    data: Any,
    dataset: Any,
    split: Any,
    *,
    emb_dir: str | Path | None,
    batch_size: int,
    workers: int,
    progress: bool,
    warnings: list[str],
) -> SplitEmbeddings:
    """Embed ``split`` of ``dataset`` (read from ``data``; see
    :func:`xmr.eval.embedded.embed_split`); undecodable items are reported in ``warnings``."""
    path = dataset.root if hasattr(data, "splits") else data
    emb = embed_split(
        encoder,
        split,
        emb_dir=emb_dir,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        source=dataset.source(path, split.name),
    )
    if emb.failed:
        warnings.append(
            f"{len(emb.failed)} item(s) could not be encoded and rank last (first: {emb.failed[0]})"
        )
    return emb
