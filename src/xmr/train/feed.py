"""What the contrastive step eats: the training images (cached in memory or streamed by
DataLoader workers) and the micro-batches of pixels, tokens and relevance-group keys that
``BatchPlan`` prescribes for each step, on the device."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from xmr.errors import XmrError
from xmr.train.data import (
    BatchPlan,
    TrainExample,
    cache_size_mb,
    cached_image_loader,
    example_keys,
    image_loader,
    preprocess_all,
)

log = logging.getLogger(__name__)


def to_device(batch: Any, device: torch.device) -> Any:
    """A tensor, or a dict of tensors, on ``device`` (non-blocking from pinned memory)."""
    non_blocking = device.type == "cuda"
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def cache_images(
    examples: list[TrainExample],
    encoder: Any,
    *,
    mode: str,
    max_mb: float,
    workers: int,
    say: Callable[[str], None],
) -> tuple[list[TrainExample], torch.Tensor | None]:
    """Preprocess every training image into memory when ``mode`` is "yes", or "auto" and they
    fit in ``max_mb``. Returns the examples (without those whose image cannot be decoded, when
    cached) and the cache (None: stream)."""
    refs = [e.image for e in examples]
    size = cache_size_mb(len(refs), encoder.preprocess)
    if not (mode == "yes" or (mode == "auto" and size is not None and size <= max_mb)):
        return examples, None
    cache, failed = preprocess_all(refs, encoder.preprocess, workers)
    if failed:
        bad = {i for i, _ in failed}
        say(
            f"warning: {len(bad)} training image(s) could not be decoded and are left out: "
            f"{failed[0][1]}"
        )
        keep = [i for i in range(len(refs)) if i not in bad]
        examples = [examples[i] for i in keep]
        cache = cache[torch.as_tensor(keep)]
    return examples, cache


class TrainFeed:
    """Iterates the micro-batches of every step from ``start`` (epoch, step) on.

    An image that failed to decode (streaming) is replaced by a copy of another example of its
    batch: image, text and keys together, so the copy is a positive of its original and the
    batch size stays equal on every rank.
    """

    def __init__(
        self,
        examples: list[TrainExample],
        encoder: Any,
        plan: BatchPlan,
        info: Any,
        *,
        cache: torch.Tensor | None,
        start: tuple[int, int],
        epochs: int,
        workers: int,
        seed: int,
        multimodal: bool = False,
    ) -> None:
        self.examples = examples
        self.multimodal = multimodal
        self.seed = seed
        self.encoder = encoder
        self.plan = plan
        self.rank = info.rank
        self.device = info.device
        self.warned_images: set[int] = set()
        if cache is not None:
            self.loader = cached_image_loader(cache, plan, self.rank, start, epochs)
        else:
            self.loader = image_loader(
                [e.image for e in examples],
                encoder.preprocess,
                plan,
                self.rank,
                start,
                epochs,
                workers,
                pin_memory=self.device.type == "cuda",
                seed=seed,
            )
        # Started here, as the loop begins (the loader has its own generator: starting its
        # workers draws nothing from the global RNG a resumed run must reproduce).
        self._batches: Iterator = iter(self.loader)

    def step_batches(self, epoch: int, step: int) -> list[tuple[Any, Any, torch.Tensor]]:
        """The micro-batches of optimiser step ``step`` of ``epoch`` (in plan order)."""
        return [
            self.assemble(mplan, *next(self._batches), step_key=(epoch, step, j))
            for j, mplan in enumerate(self.plan.micro_batches(epoch, step, self.rank))
        ]

    def _item_tokens(self, mplan, position, step_key) -> dict[str, torch.Tensor]:
        captions = []
        fallback = next(ex for ex, _t in mplan if ex in position)
        for ex, _t in mplan:
            ex = ex if ex in position else fallback
            options = self.examples[ex].captions
            draw = zlib.crc32(f"{self.seed}:{step_key}:{ex}".encode())
            captions.append(options[draw % len(options)])
        item = self.encoder.tokenize(captions)
        return {f"item_{k}": v for k, v in item.items()}

    def close(self) -> None:
        """Stop the DataLoader workers."""
        if hasattr(self._batches, "_shutdown_workers"):
            self._batches._shutdown_workers()

    def assemble(self, mplan, indices, pixels, failed, step_key=(0, 0, 0)):
        """Pixels, tokens and group keys of one micro-batch (see the class docstring). With
        ``multimodal``, the pixels are a dict that also holds the tokens of one caption per row
        (``item_input_ids`` / ``item_attention_mask``), drawn from (seed, step, item): the
        same on a resumed run."""
        position = {ex: k for k, ex in enumerate(indices)}
        for ex, err in failed:
            if ex not in self.warned_images:
                self.warned_images.add(ex)
                log.warning("training image replaced in its batch: %s", err)
        if not position:
            raise XmrError(f"no image of a training batch could be decoded: {failed[0][1]}")
        fallback = next(i for i, (ex, _t) in enumerate(mplan) if ex in position)
        rows, texts, keys = [], [], []
        for ex, t in mplan:
            if ex not in position:
                ex, t = mplan[fallback]
            example = self.examples[ex]
            rows.append(position[ex])
            texts.append(example.texts[t])
            keys.append(example_keys(example, example.texts[t]))
        index = torch.as_tensor(rows)
        if isinstance(pixels, torch.Tensor):
            if rows != list(range(len(rows))):
                pixels = pixels[index]
        else:
            pixels = {k: v[index] for k, v in pixels.items()}
        tokens = self.encoder.tokenize(texts)
        if self.multimodal:
            pixels = {"pixel_values": pixels, **self._item_tokens(mplan, position, step_key)}
        return (
            to_device(pixels, self.device),
            to_device(tokens, self.device),
            torch.tensor(keys, dtype=torch.int64, device=self.device),
        )
