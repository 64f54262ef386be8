"""Pair scores in the spirit of a pipeline: ``xmr.pipeline("image-text-retrieval", model=...)``.

Seed 002 (mPLUG) scores one image and one text; here every pair gets the bi-encoder's cosine
similarity (the number first-stage search ranks by) and, when a cross-encoder is given, its
match probability::

    score = xmr.pipeline("image-text-retrieval", model="hf:./my-clip", cross_encoder="./my-blip")
    score({"image": "dog.jpg", "text": "a dog on grass"})
    # {"text": "a dog on grass", "similarity": 0.31, "match_prob": 0.87}
    score({"image": photo_bytes, "text": ["a dog", "a cat"]})      # one dict per text
    score([{"image": "a.jpg", "text": "x"}, {"image": "b.jpg", "text": "y"}])

A cross-encoder alone may be the model, as in ModelScope's
``pipeline(Tasks.image_text_retrieval, model=...)`` (seed 002); each result then also carries
ModelScope's ``scores`` pair, ``[p(no match), p(match)]``::

    score = xmr.pipeline("image-text-retrieval", model="mplug:./mplug_image-text-retrieval_flickr30k_large_en")
    score({"image": "https://.../image-text-retrieval.jpg", "question": "Two young guys ..."})
    # {"text": "Two young guys ...", "match_prob": 0.93, "scores": [0.07, 0.93]}

An image is a PIL image, encoded bytes, an ``ImageRef``, a ``pathlib.Path``, a string that is a
file path, an http(s) URL (fetched; an unreachable one is an error naming it), or the id of an
item of the data set given as ``dataset=``. The text key may also be spelled ``question``
(mPLUG's name for it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmr.data.images import decode_image
from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.models import create_encoder
from xmr.models.cross_encoders import (
    CrossEncoder,
    create_cross_encoder,
    is_cross_encoder_spec,
    match_probabilities,
)

TASKS = ("image-text-retrieval", "image-text-similarity")


def pipeline(
    task: str = "image-text-retrieval",
    model: Any = None,
    cross_encoder: Any = None,
    *,
    dataset: Any = None,
    split: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    batch_size: int = 32,
) -> ImageTextScorer:
    """Build a callable that scores image-text pairs.

    Args:
        task: "image-text-retrieval" (alias "image-text-similarity").
        model: bi-encoder spec (see ``xmr.models.create_encoder``) or an ``Encoder``; or a
            cross-encoder spec (``mplug:DIR``, ``blip:...``, a ModelScope mPLUG directory) or
            ``CrossEncoder`` when ``cross_encoder`` is not given: pairs are then scored by it
            alone (no ``similarity``; ModelScope's ``scores`` pair besides ``match_prob``).
        cross_encoder: optional cross-encoder spec or instance (adds ``match_prob``).
        dataset: a data set path or ``RetrievalDataset`` whose item ids may name images.
        split: the split of ``dataset`` to take items from (default: all splits).
        device: "cpu", "cuda", ...; default: CUDA when available.
        precision: "fp32", "fp16" or "bf16".
        batch_size: pairs per forward pass.
    """
    if task not in TASKS:
        raise XmrError(f"unknown pipeline task '{task}' (available: {', '.join(TASKS)})")
    return ImageTextScorer(
        model,
        cross_encoder,
        dataset=dataset,
        split=split,
        device=device,
        precision=precision,
        batch_size=batch_size,
    )


class ImageTextScorer:
    """Scores (image, text) pairs with a bi-encoder and optionally a cross-encoder."""

    def __init__(
        self,
        model: Any,
        cross_encoder: Any = None,
        *,
        dataset: Any = None,
        split: str | None = None,
        device: str | None = None,
        precision: str = "fp32",
        batch_size: int = 32,
    ) -> None:

        if model is None:
            raise XmrError(
                "image-text-retrieval needs a model: pass model=<bi-encoder or cross-encoder spec>"
            )
        # The seed's form: the cross-encoder is the model (ModelScope's mPLUG pipeline).
        self.modelscope_style = cross_encoder is None and (
            isinstance(model, CrossEncoder)
            or (isinstance(model, str | os.PathLike) and is_cross_encoder_spec(str(model)))
        )
        if self.modelscope_style:
            model, cross_encoder = None, model
        self.encoder = (
            create_encoder(model, device=device, precision=precision)
            if isinstance(model, str | os.PathLike)
            else model
        )
        self.cross_encoder = (
            None
            if cross_encoder is None
            else create_cross_encoder(cross_encoder, device=device, precision=precision)
        )
        self.items = _items_of(dataset, split)
        self.batch_size = batch_size

    def __call__(self, inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        """Score ``{"image": ..., "text": str | [str, ...]}`` or a list of such dicts.

        One dict with one text gives one result dict; a list of texts or of inputs gives a list,
        in the order given.
        """
        single = isinstance(inputs, Mapping)
        requests = [inputs] if single else list(inputs)
        images: list[Any] = []
        texts: list[str] = []
        for n, request in enumerate(requests):
            if not isinstance(request, Mapping):
                raise XmrError(f"input {n} must be a dict with 'image' and 'text', not {request!r}")
            if "image" not in request:
                raise XmrError(f"input {n} has no 'image'")
            text = request.get("text", request.get("question"))
            if text is None:
                raise XmrError(f"input {n} has no 'text'")
            image = self.load_image(request["image"])
            from xmr.models.base import check_texts

            for t in check_texts(
                [text] if isinstance(text, str) else list(text),
                what=f"input {n}: text",
                allow_empty=False,
            ):
                images.append(image)
                texts.append(t)
        results = self.score_pairs(images, texts)
        if single and isinstance(inputs.get("text", inputs.get("question")), str):
            return results[0]
        return results

    def score_pairs(self, images: Sequence[Any], texts: Sequence[str]) -> list[dict[str, Any]]:
        """Aligned pairs -> ``[{"text", "similarity", "match_prob"?}]``; images are PIL images.

        Each distinct image (by identity) and each distinct text is encoded once. With a
        cross-encoder alone: ``[{"text", "match_prob", "scores": [1 - match_prob, match_prob]}]``.
        """
        import numpy as np

        if len(images) != len(texts):
            raise XmrError(f"{len(images)} images but {len(texts)} texts")
        if not texts:
            return []
        if self.encoder is None:
            logits = self.cross_encoder.logits(
                list(images), list(texts), batch_size=self.batch_size
            )
            pairs = match_probabilities(logits)
            return [
                {"text": t, "match_prob": float(p[1]), "scores": [float(p[0]), float(p[1])]}
                for t, p in zip(texts, pairs, strict=True)
            ]
        unique_images: dict[int, int] = {}
        image_list = []
        for im in images:
            if id(im) not in unique_images:
                unique_images[id(im)] = len(image_list)
                image_list.append(im)
        unique_texts = list(dict.fromkeys(texts))
        text_row = {t: i for i, t in enumerate(unique_texts)}
        image_emb = np.asarray(self.encoder.encode_images(image_list, batch_size=self.batch_size))
        text_emb = np.asarray(self.encoder.encode_texts(unique_texts, batch_size=self.batch_size))
        rows = [unique_images[id(im)] for im in images]
        cols = [text_row[t] for t in texts]
        # max-sim: the best of a multi-vector image's K vectors (K=1: the cosine similarity)
        image_emb = image_emb.reshape(len(image_emb), -1, image_emb.shape[-1])
        sims = np.einsum("nkd,nd->nk", image_emb[rows], text_emb[cols]).max(axis=1)
        out = [{"text": t, "similarity": float(s)} for t, s in zip(texts, sims, strict=True)]
        if self.cross_encoder is not None:
            probs = self.cross_encoder.score(list(images), list(texts), batch_size=self.batch_size)
            for r, p in zip(out, probs, strict=True):
                r["match_prob"] = float(p)
        return out

    def load_image(self, image: Any) -> Any:
        """A PIL image from a path, URL, bytes, ``ImageRef``, PIL image or data-set item id."""
        from xmr.models.base import load_image

        if isinstance(image, str):
            if Path(image).is_file():
                return load_image(image)
            if self.items is not None and image in self.items:
                item = self.items[image]
                if item.image is None:
                    raise XmrError(f"item '{image}' has no image")
                return load_image(item.image)
            if image.startswith(("http://", "https://")):
                return _fetch_url(image)
            where = " or an item id of the data set" if self.items is not None else ""
            raise XmrError(f"image '{image}' is not a file{where}")
        if hasattr(image, "image") and hasattr(image, "captions"):  # an Item
            return load_image(image.image)
        try:
            return load_image(image)
        except TypeError as exc:
            raise XmrError(str(exc)) from None


def _items_of(dataset: Any, split: str | None) -> dict[str, Any] | None:
    if dataset is None:
        return None
    if isinstance(dataset, str | os.PathLike):
        dataset = load_dataset(dataset, split=split)
    splits = [dataset.split(split)] if split else list(dataset.splits.values())
    items: dict[str, Any] = {}
    for s in splits:
        for item_id, item in s.items.items():
            items.setdefault(str(item_id), item)
    return items


def _fetch_url(url: str) -> Any:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (http(s) only)
            data = response.read(64 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise XmrError(
            f"cannot fetch image {url}: the server answered {exc.code} {exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise XmrError(
            f"cannot fetch image {url}: {reason} (no network here? download it and give the file)"
        ) from None
    return decode_image(data, source=url)
