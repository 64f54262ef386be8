"""``ce:<hub id or dir>``: a sentence-transformers ``CrossEncoder`` as a text reranker.

It reads (query text, document text) pairs and is registered among the cross-encoders, so
``--rerank ce:...`` reranks a text retrieval. :meth:`SentenceCrossEncoder.logits` returns
``[0, logit]`` per pair: the rerank ``itm`` mode's softmax column 1 is then ``sigmoid(logit)``,
the score ``CrossEncoder.predict`` gives a one-label model, and ``itm+sim`` adds the raw logit
to the first-stage score. Batched, on CUDA when present (``device=None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.models.cross_encoders import CrossEncoder, register_cross_encoder


class SentenceCrossEncoder(CrossEncoder):
    """A sentence-transformers ``CrossEncoder`` scoring (query text, document text) pairs."""

    pair_kind = "text-text"

    def __init__(self, model: Any, spec: str, device: str) -> None:
        self.model = model
        self.spec = spec
        self.device = device
        labels = int(getattr(model, "num_labels", 1))
        if labels != 1:
            raise XmrError(
                f"{spec}: a reranking cross-encoder has one output label, this one has {labels}"
            )

    @classmethod
    def load(cls, source: str, *, device: str | None = None, precision: str = "fp32", **_: Any):
        # torch (through xmr.models.base) loads only when a model is built
        from xmr.models.base import resolve_device
        from xmr.models.st_models import model_source, require_sentence_transformers

        st = require_sentence_transformers()
        dev = str(resolve_device(device))
        try:
            model = st.CrossEncoder(model_source(source), device=dev)
        except (OSError, ValueError) as exc:
            raise XmrError(f"cannot load cross-encoder '{source}': {exc}") from None
        return cls(model, f"ce:{source}", dev)

    def logits(
        self, documents: Sequence[str], queries: Sequence[str], batch_size: int = 32
    ) -> np.ndarray:
        """``(n, 2)``: ``[0, logit]`` for each aligned (query, document) pair (see the module
        docstring); ``documents`` come first, where the image-text encoders take the items."""
        import torch

        from xmr.models.base import check_texts

        if len(documents) != len(queries):
            raise XmrError(f"{len(queries)} queries but {len(documents)} documents")
        check_texts(documents, what="document")
        check_texts(queries, what="query")
        if not len(queries):
            return np.zeros((0, 2), dtype=np.float32)
        raw = self.model.predict(
            list(zip(queries, documents, strict=True)),
            batch_size=batch_size,
            activation_fn=torch.nn.Identity(),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        raw = np.asarray(raw, dtype=np.float32).reshape(-1)
        return np.stack([np.zeros_like(raw), raw], axis=1)


@register_cross_encoder("ce")
def _ce_backend(source: str, **kwargs: Any) -> CrossEncoder:
    return SentenceCrossEncoder.load(source, **kwargs)
