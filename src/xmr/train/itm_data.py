"""The batches of ITM training: matching pairs, hard negatives from a first stage, and the
``3B`` pairs of one step (each match, a non-matching text for its image, a non-matching image
for its text), as in BLIP / BLIP-2 (LAVIS)."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmr.encode import embed_image_refs
from xmr.errors import XmrError
from xmr.eval.ranking import topk_from_embeddings
from xmr.models.base import load_image


def positive_pairs(split: Any) -> list[tuple[str, str]]:
    """``(item id, text)`` matching pairs: the split's training pairs, else its relevance."""
    pairs: list[tuple[str, str]] = []
    if any(split.pairs.values()):
        for item_id, texts in split.pairs.items():
            pairs.extend((str(item_id), t) for t in texts)
    else:
        for qid, item_ids in split.relevance.items():
            text = split.queries[qid].text
            pairs.extend((str(i), text) for i in sorted(item_ids))
    pairs = [(i, t) for i, t in pairs if i in split.items and split.items[i].image is not None]
    if not pairs:
        raise XmrError(f"split '{split.name}' has no matching (image, text) pairs to train on")
    return pairs


def mine_hard_negatives(
    encoder: Any,
    image_refs: Sequence[Any],
    texts: Sequence[str],
    positives: Sequence[tuple[int, int]],
    n: int,
    *,
    batch_size: int | None = None,
    device: Any = None,
    workers: int = 0,
) -> tuple[list[list[int]], list[list[int]]]:
    """The ``n`` highest-scoring non-matching texts of each image and images of each text.

    Args:
        encoder: the first-stage bi-encoder.
        image_refs, texts: the candidates (ImageRefs, embedded the one way xmr embeds images,
            :func:`xmr.encode.embed_image_refs`: an undecodable one ranks last; strings).
        positives: ``(image index, text index)`` matching pairs (excluded from the negatives).
        n: negatives kept per image and per text.

    Returns:
        ``(texts_for_image, images_for_text)``: lists of indices, hardest first.
    """
    image_emb, _ = embed_image_refs(
        encoder, list(image_refs), batch_size=batch_size, workers=workers
    )
    text_emb = np.asarray(encoder.encode_texts(list(texts), batch_size=batch_size))
    match_of_image, match_of_text = _matches(positives)
    # Ask for enough candidates that n survive removing the matches.
    depth_i = min(len(texts), n + max((len(v) for v in match_of_image.values()), default=0))
    depth_t = min(len(image_refs), n + max((len(v) for v in match_of_text.values()), default=0))
    top_t, _ = topk_from_embeddings(image_emb, text_emb, depth_i, device=device)
    top_i, _ = topk_from_embeddings(text_emb, image_emb, depth_t, device=device)
    texts_for_image = [
        [int(t) for t in row if t not in match_of_image.get(i, ())][:n]
        for i, row in enumerate(top_t)
    ]
    images_for_text = [
        [int(i) for i in row if i not in match_of_text.get(t, ())][:n]
        for t, row in enumerate(top_i)
    ]
    return texts_for_image, images_for_text


def _matches(positives: Sequence[tuple[int, int]]) -> tuple[dict[int, set[int]], ...]:
    match_of_image: dict[int, set[int]] = {}
    match_of_text: dict[int, set[int]] = {}
    for i, t in positives:
        match_of_image.setdefault(i, set()).add(t)
        match_of_text.setdefault(t, set()).add(i)
    return match_of_image, match_of_text


class _ImageCache:
    """Decoded images, least recently used dropped first (a step re-reads few images)."""

    def __init__(self, refs: Sequence[Any], size: int = 2048) -> None:
        self.refs = refs
        self.size = size
        self.cache: OrderedDict[int, Any] = OrderedDict()

    def __getitem__(self, index: int) -> Any:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        image = load_image(self.refs[index])
        self.cache[index] = image
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return image


@dataclass
class ItmBatch:
    """The pairs of one step and their labels (1: match, 0: not)."""

    images: list[Any]
    texts: list[str]
    labels: list[int]


class ItmPairs:
    """A split's matching pairs as indices, with the negatives each step draws.

    Args:
        split: the training split (items with images; pairs or relevance).
        first_stage: the bi-encoder whose top non-matching results are the negatives (None:
            random non-matching ones).
        hard_negatives: how many of the first stage's top non-matches to draw from.
        seed: batch order and negative draws.
    """

    def __init__(self, split: Any, first_stage: Any, hard_negatives: int, seed: int) -> None:
        pairs = positive_pairs(split)
        item_ids = sorted({i for i, _ in pairs})
        self.texts = list(dict.fromkeys(t for _, t in pairs))
        item_index = {i: n for n, i in enumerate(item_ids)}
        text_index = {t: n for n, t in enumerate(self.texts)}
        self.positives = [(item_index[i], text_index[t]) for i, t in pairs]
        self.refs = [split.items[i].image for i in item_ids]
        self.match_of_image, self.match_of_text = _matches(self.positives)
        self.hard_texts = self.hard_images = None
        if first_stage is not None and hard_negatives > 0:
            self.hard_texts, self.hard_images = mine_hard_negatives(
                first_stage, self.refs, self.texts, self.positives, hard_negatives
            )
        self.rng = random.Random(seed)
        self.images = _ImageCache(self.refs)
        self._order: list[int] = []

    @property
    def negatives(self) -> str:
        """Where the negatives come from: "first-stage" or "random"."""
        return "first-stage" if self.hard_texts is not None else "random"

    def batch(self, batch_size: int) -> ItmBatch:
        """The next ``batch_size`` matches (reshuffled each pass) with their two negatives."""
        rng, images, texts = self.rng, self.images, self.texts
        out = ItmBatch([], [], [])
        for _ in range(batch_size):
            if not self._order:
                self._order = list(range(len(self.positives)))
                rng.shuffle(self._order)
            i, t = self.positives[self._order.pop()]
            out.images.append(images[i])
            out.texts.append(texts[t])
            out.labels.append(1)
            neg_t = (
                rng.choice(self.hard_texts[i])
                if self.hard_texts and self.hard_texts[i]
                else _random_negative(rng, len(texts), self.match_of_image[i])
            )
            if neg_t is not None:
                out.images.append(images[i])
                out.texts.append(texts[neg_t])
                out.labels.append(0)
            neg_i = (
                rng.choice(self.hard_images[t])
                if self.hard_images and self.hard_images[t]
                else _random_negative(rng, len(self.refs), self.match_of_text[t])
            )
            if neg_i is not None:
                out.images.append(images[neg_i])
                out.texts.append(texts[t])
                out.labels.append(0)
        return out


def _random_negative(rng: random.Random, n: int, exclude: set[int]) -> int | None:
    if len(exclude) >= n:
        return None
    while True:
        c = rng.randrange(n)
        if c not in exclude:
            return c
