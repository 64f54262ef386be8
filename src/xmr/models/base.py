"""The Encoder interface every backend implements, and the parts they share.

An encoder is a text tower and an image tower mapping into one embedding space. Retrieval uses
``encode_texts`` / ``encode_images`` (L2-normalised float32, no grad, batched, precision handled
inside); training uses ``tokenize`` / ``image_features`` / ``text_features`` (unnormalised, with
grad), ``logit_scale`` / ``logit_bias`` and ``model`` (the ``nn.Module`` to optimise).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.data.images import ImageRef, decode_image
from xmr.errors import XmrError
from xmr.models.preprocess import ImagePreprocess

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or "auto" -> cuda when available, else cpu; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise XmrError(f"device '{device}' asked for, but CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Validate ``precision``; fp16 on CPU falls back to fp32 with a warning (CPU fp16 autocast
    is slow and numerically poor; bf16 autocast on CPU is supported)."""
    if precision not in PRECISIONS:
        raise XmrError(f"unknown precision '{precision}' (choose from fp32, fp16, bf16)")
    if precision == "fp16" and device.type == "cpu":
        warnings.warn("fp16 is not supported on CPU; using fp32", stacklevel=3)
        return "fp32"
    return precision


def load_image(image: Any, draft_size: tuple[int, int] | None = None) -> Any:
    """A PIL image from a PIL image, an ``ImageRef``, a path or encoded bytes."""
    from PIL import Image

    if isinstance(image, Image.Image | np.ndarray):
        return image

    if isinstance(image, ImageRef):
        return image.open(draft_size=draft_size)
    if isinstance(image, bytes | bytearray):
        return decode_image(bytes(image), draft_size=draft_size)
    if isinstance(image, str | os.PathLike):
        return ImageRef(path=str(image)).open(draft_size=draft_size)
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def state_dict_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in the state dict, in name order.

    The same weights give the same fingerprint however they were loaded or saved (hub id, local
    dir, re-saved copy); any changed weight changes it.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # view as bytes: works for every dtype (bf16 has no numpy equivalent); hashed through
        # the buffer, not a ``tobytes()`` copy (the embedding matrix of a large model is 100+ MB).
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def check_texts(texts: Iterable[Any], *, what: str = "text", allow_empty: bool = True) -> list[str]:
    """The texts as a list, or an XmrError naming the first one that is not a string, holds
    bytes that were not UTF-8 (a command-line argument in another encoding arrives as lone
    surrogates, which no tokenizer takes) or, unless ``allow_empty``, is empty or blank."""
    out = list(texts)
    for n, text in enumerate(out, 1):
        where = what if len(out) == 1 else f"{what} {n}"
        if not isinstance(text, str):
            raise XmrError(f"{where} must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "replace").decode("utf-8")[:60]
            raise XmrError(
                f"{where} {shown!r} is not valid UTF-8 (it holds undecodable bytes)"
            ) from None
        if not allow_empty and not text.strip():
            raise XmrError(f"{where} is empty")
    return out


class Encoder:
    """Base class of all encoders. Subclasses set the attributes in ``__init__`` and implement
    ``tokenize``, ``image_features``, ``text_features`` and ``save``.

    Attributes:
        spec: the spec string that loads this model again (local paths made absolute).
        backend: registry name of the backend ("hf", "open_clip").
        model: the underlying ``torch.nn.Module`` (both towers and the temperature).
        preprocess: picklable ``ImagePreprocess`` (PIL image -> model input), for DataLoader
            workers.
        embed_dim: dimension of the joint embedding space.
        context_length: maximum text length in tokens (longer texts are truncated).
        device: where the model lives.
        precision: "fp32", "fp16" or "bf16" (autocast; weights stay fp32).
        image_vectors: vectors per image (class attribute). 1 for single-vector encoders (CLIP,
            SigLIP); K for a multi-vector one (BLIP-2: its ``num_query_tokens`` query
            embeddings), whose ``image_features`` return (B, K, embed_dim) and
            ``encode_images`` (N, K, embed_dim), each vector normalised; an image and a text
            then score ``max_k <t, v_k>`` (:func:`xmr.vectors.max_sim`). Texts are always
            (N, embed_dim).
        text_runtime: None (eager PyTorch), or what runs ``encode_texts``' text tower instead
            (``runtime="onnx"``: :class:`xmr.models.onnx_text.OnnxTextRuntime`, token tensors ->
            unnormalised features); ``text_features`` (training, with grad) is always eager.
    """

    spec: str
    backend: str
    model: torch.nn.Module
    preprocess: ImagePreprocess
    embed_dim: int
    context_length: int
    device: torch.device
    precision: str = "fp32"
    default_text_batch_size: int = 256
    default_image_batch_size: int = 64
    image_vectors: int = 1
    text_runtime: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None

    # ---- subclass API -------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token tensors (on CPU) for ``texts``: padded, truncated to ``context_length``."""
        raise NotImplementedError

    def image_features(
        self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Unnormalised image embeddings (B, embed_dim), or (B, image_vectors, embed_dim) for a
        multi-vector encoder, with grad when grad is enabled."""
        raise NotImplementedError

    def text_features(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Unnormalised text embeddings (B, embed_dim) from ``tokenize``'s output."""
        raise NotImplementedError

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the model so that ``create_encoder(<backend>:out_dir)`` loads it back."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        """Learnable log-temperature (logits = exp(logit_scale) * cosine)."""
        return self.model.logit_scale

    @property
    def logit_bias(self) -> torch.nn.Parameter | None:
        """SigLIP's learnable logit bias; None for CLIP-style models."""
        return getattr(self.model, "logit_bias", None)

    # ---- shared behaviour ---------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for this encoder's device and precision (no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    def to(self, device: str | torch.device) -> Encoder:
        self.device = resolve_device(device)
        self.precision = resolve_precision(self.precision, self.device)
        self.model.to(self.device)
        return self

    def encode_texts(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        *,
        as_tensor: bool = False,
        progress: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """L2-normalised float32 embeddings (N, embed_dim) of ``texts``, in order."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings, not one string")
        texts = check_texts(texts)
        batch_size = batch_size or self.default_text_batch_size

        runtime = self.text_runtime
        if runtime is not None and self.device.type != "cpu":
            raise XmrError(f"the ONNX text runtime runs on the CPU; the model is on {self.device}")

        def run(chunk: list[str]) -> torch.Tensor:
            if runtime is not None:
                return runtime(self.tokenize(chunk))
            return self.text_features(self._to_device(self.tokenize(chunk)))

        return self._encode(texts, batch_size, run, as_tensor, progress, "texts")

    def encode_images(
        self,
        images: Sequence[Any] | torch.Tensor | Mapping[str, torch.Tensor],
        batch_size: int | None = None,
        *,
        as_tensor: bool = False,
        progress: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """L2-normalised float32 embeddings (N, embed_dim) of ``images``; (N, K, embed_dim),
        every vector normalised, for a multi-vector encoder (``image_vectors`` = K > 1).

        ``images`` is either a batch (a float (N, 3, H, W) tensor of preprocessed pixels; a uint8
        (N, H, W, 3) tensor of ``preprocess.crop`` outputs, normalised here on the device; or the
        dict of tensors ``default_collate`` makes of NaFlex outputs, float or uint8) or a sequence
        of PIL images, uint8 arrays, ``ImageRef``s, paths or encoded bytes, decoded and
        preprocessed here (JPEG draft decoding only when ``preprocess.draft``).
        """
        if isinstance(images, torch.Tensor | Mapping):
            batch = images

            def run_batch(idx: slice) -> torch.Tensor:
                return self.image_features(self._pixels(_slice_batch(batch, idx)))

            n = _batch_len(batch)
            chunks = [
                slice(i, min(i + (batch_size or n or 1), n))
                for i in range(0, n, batch_size or n or 1)
            ]
            return self._encode_chunks(chunks, n, run_batch, as_tensor, progress, "images")

        images = list(images)

        def run(chunk: list[Any]) -> torch.Tensor:
            # Full decode unless draft decoding was asked for: the reference processor's pixels.
            draft_size = getattr(self.preprocess, "draft_size", None)
            crops = [self.preprocess.crop(load_image(im, draft_size)) for im in chunk]
            return self.image_features(self._pixels(_collate_crops(crops)))

        batch_size = batch_size or self.default_image_batch_size
        return self._encode(images, batch_size, run, as_tensor, progress, "images")

    def manifest(self) -> dict[str, Any]:
        """What an index stores to refuse a different model: spec, backend, embed_dim, vectors
        per image (``image_vectors``; absent in older manifests, meaning 1), the preprocessing
        (image and text) and a fingerprint of the weights."""
        preprocess = self.preprocess.to_dict()
        preprocess["context_length"] = int(self.context_length)
        return {
            "spec": self.spec,
            "backend": self.backend,
            "embed_dim": int(self.embed_dim),
            "image_vectors": int(self.image_vectors),
            "preprocess": preprocess,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """Stable sha256 of the weights (cached until a parameter changes in place)."""
        key = tuple(t._version for t in self.model.state_dict().values())
        cached = getattr(self, "_fingerprint_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, state_dict_fingerprint(self.model))
            self._fingerprint_cache = cached
        return cached[1]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spec={self.spec!r}, embed_dim={self.embed_dim}, "
            f"device={self.device}, precision={self.precision})"
        )

    # ---- helpers ------------------------------------------------------------------------------

    def _pixels(self, batch: Any) -> Any:
        """A batch on the device, uint8 crops normalised there (after the 4x smaller copy)."""
        batch = self._to_device(batch)
        uint8 = batch.get("pixel_values") if isinstance(batch, Mapping) else batch
        if uint8 is not None and uint8.dtype == torch.uint8:
            return self.preprocess.normalize(batch)
        return batch

    def _to_device(self, batch: Any) -> Any:
        non_blocking = self.device.type == "cuda"
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=non_blocking)
        return {k: v.to(self.device, non_blocking=non_blocking) for k, v in batch.items()}

    def _encode(
        self,
        inputs: list[Any],
        batch_size: int,
        run: Callable[[list[Any]], torch.Tensor],
        as_tensor: bool,
        progress: bool,
        what: str,
    ) -> np.ndarray | torch.Tensor:
        chunks = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        return self._encode_chunks(chunks, len(inputs), run, as_tensor, progress, what)

    def _encode_chunks(
        self,
        chunks: Iterable[Any],
        total: int,
        run: Callable[[Any], torch.Tensor],
        as_tensor: bool,
        progress: bool,
        what: str,
    ) -> np.ndarray | torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        outputs: list[torch.Tensor] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit=what[:-1], desc=f"encoding {what}", dynamic_ncols=True)
        try:
            with torch.inference_mode(), self.autocast():
                for chunk in chunks:
                    feats = run(chunk).float()
                    # Per vector, along the last axis: (B, D) and a multi-vector (B, K, D) alike.
                    feats = torch.nn.functional.normalize(feats, dim=-1)
                    outputs.append(feats if as_tensor else feats.cpu())
                    if bar is not None:
                        bar.update(feats.shape[0])
        finally:
            if bar is not None:
                bar.close()
            self.model.train(was_training)
        if outputs:
            result = torch.cat(outputs)
        else:
            k = int(self.image_vectors) if what == "images" else 1
            shape = (0, k, self.embed_dim) if k > 1 else (0, self.embed_dim)
            result = torch.zeros(shape, dtype=torch.float32)
        return result if as_tensor else result.numpy()


def _collate_crops(items: list[Any]) -> Any:
    if isinstance(items[0], Mapping):
        return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}
    return torch.from_numpy(np.stack(items))


def _batch_len(batch: torch.Tensor | Mapping[str, torch.Tensor]) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return int(next(iter(batch.values())).shape[0])


def _slice_batch(batch: torch.Tensor | Mapping[str, torch.Tensor], idx: slice) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[idx]
    return {k: v[idx] for k, v in batch.items()}
