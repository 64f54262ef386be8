"""sentence-transformers models: ``st:`` bi-encoders and ``ce:`` text cross-encoders.

* ``st:<hub id or dir>`` is a text-only :class:`~xmr.models.base.Encoder` usable wherever
  ``--model`` is (encode, index build, search, evaluate, serve). The model's own modules decide
  pooling and normalisation (a ``Normalize`` module or not: xmr L2-normalises the output
  anyway, as every encoder does, so the inner product is the cosine). Prompts are the model's
  own (``config_sentence_transformers.json``): queries get its ``query`` prompt and corpus texts
  its ``document`` prompt (the names sentence-transformers' ``encode_query`` /
  ``encode_document`` use), or ``query_prompt=`` / ``document_prompt=`` given here.
* ``ce:<hub id or dir>`` (:mod:`xmr.models.text_cross_encoder`) is a sentence-transformers
  ``CrossEncoder`` reading (query, document)
  text pairs, registered as a cross-encoder so ``--rerank ce:...`` reranks text retrieval. Its
  :meth:`SentenceCrossEncoder.logits` returns ``[0, logit]`` per pair, so the rerank ``itm``
  mode's softmax column 1 is ``sigmoid(logit)``, the score ``CrossEncoder.predict`` gives a
  one-label model, and ``itm+sim`` adds the raw logit to the first-stage score.

Both run batched on the device asked for (CUDA when present by default). The save format is
sentence-transformers' own (``modules.json``, ``config_sentence_transformers.json``...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.models.base import Encoder, check_texts, resolve_device, resolve_precision


def require_sentence_transformers():
    """The sentence_transformers module, or an XmrError saying how to install it."""
    try:
        import sentence_transformers
    except ImportError:
        raise XmrError(
            "st: and ce: models need sentence-transformers: pip install 'xmr[text]'"
        ) from None
    return sentence_transformers


def model_source(target: str) -> str:
    """An absolute path for a local directory, else the hub id as given."""
    path = Path(target).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or target.startswith((".", "/", "~")):
        raise XmrError(f"{target}: not a sentence-transformers model directory")
    return target  # a hub id (needs the hub or its cache)


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers bi-encoder as an xmr text encoder (no image tower)."""

    backend = "st"

    def __init__(
        self,
        model: Any,
        spec: str,
        *,
        device: Any = None,
        precision: str = "fp32",
        query_prompt: str | None = None,
        document_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model.to(self.device)
        # sentence-transformers 6 renamed get_sentence_embedding_dimension
        dim_of = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        dim = dim_of()
        if not dim:
            raise XmrError(f"{spec}: the model does not say its embedding dimension")
        self.embed_dim = int(dim)
        self.context_length = int(model.max_seq_length or 0)
        prompts = dict(getattr(model, "prompts", None) or {})
        self.query_prompt = query_prompt if query_prompt is not None else prompts.get("query", "")
        self.document_prompt = (
            document_prompt if document_prompt is not None else prompts.get("document", "")
        )

    @classmethod
    def load(
        cls, target: str, *, device: Any = None, precision: str = "fp32", **kwargs: Any
    ) -> SentenceTransformerEncoder:
        source = model_source(target)
        st = require_sentence_transformers()
        dev = resolve_device(device)
        try:
            model = st.SentenceTransformer(source, device=str(dev))
        except (OSError, ValueError) as exc:
            raise XmrError(f"cannot load sentence-transformers model '{target}': {exc}") from None
        return cls(model, f"st:{source}", device=dev, precision=precision, **kwargs)

    preprocess = None  # a text model has no image preprocessing

    def _run(self, texts: Sequence[str], prompt: str, batch_size: int | None, progress: bool):
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        with self.autocast():
            out = self.model.encode(
                list(texts),
                prompt=prompt or None,
                batch_size=batch_size or self.default_text_batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
        return np.asarray(out, dtype=np.float32)

    def encode_texts(self, texts, batch_size=None, *, as_tensor=False, progress=False):
        """Query embeddings (the model's ``query`` prompt), L2-normalised float32."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings, not one string")
        out = self._run(texts, self.query_prompt, batch_size, progress)
        return _maybe_tensor(out, as_tensor)

    def encode_documents(self, texts, batch_size=None, *, as_tensor=False, progress=False):
        """Corpus embeddings (the model's ``document`` prompt), L2-normalised float32."""
        if isinstance(texts, str):
            raise TypeError("encode_documents takes a list of strings, not one string")
        out = self._run(texts, self.document_prompt, batch_size, progress)
        return _maybe_tensor(out, as_tensor)

    def encode_images(self, images, batch_size=None, *, as_tensor=False, progress=False):
        raise XmrError(
            f"{self.spec} is a text model: it cannot encode images (index an item's captions, "
            "or use a CLIP-family model for images)"
        )

    def save(self, out_dir: str | os.PathLike) -> Path:
        self.model.save(str(out_dir))
        return Path(out_dir)

    def manifest(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "backend": self.backend,
            "embed_dim": self.embed_dim,
            "preprocess": {
                "context_length": self.context_length,
                "query_prompt": self.query_prompt,
                "document_prompt": self.document_prompt,
                "modality": "text",
            },
            "fingerprint": self.fingerprint(),
        }


def _maybe_tensor(x: np.ndarray, as_tensor: bool):
    if not as_tensor:
        return x
    import torch

    return torch.from_numpy(x)
