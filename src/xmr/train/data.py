"""Training examples, the deterministic batch plan, and image loading for training.

An *example* is one item (an image) with the texts that describe it and its relevance group. An
epoch visits every example once; an example with several texts uses one of them per step, drawn
from a generator seeded by ``(seed, epoch)`` (seed 001 samples one of three captions per step).

The plan is a pure function of ``(seed, epoch)``: the permutation of the examples and the text
choices never depend on the process's RNG state, the number of DataLoader workers or where a
run was interrupted, so a resumed run sees exactly the batches the uninterrupted run would have
seen, and ``W`` ranks with micro-batch ``B`` see exactly the rows that one process with
micro-batch ``W * B`` sees (rank ``r`` takes rows ``[r*B, (r+1)*B)`` of each global micro-batch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xmr.data.loading import ImageDataset, collate_images, worker_init
from xmr.errors import XmrError
from xmr.train.losses import group_key

log = logging.getLogger(__name__)


@dataclass
class TrainExample:
    """One training item.

    Attributes:
        item_id: the item's id in its split.
        image: its ``ImageRef``.
        texts: the texts that describe it (one is sampled per step).
        group: the relevance group: items of one group are all relevant to each other's texts
            (Track2: the attribute string; otherwise the item's set of texts).
        captions: the item's captions (training on multimodal items samples one per step).
    """

    item_id: str
    image: object
    texts: list[str]
    group: str
    captions: tuple[str, ...] = ()


TEXT_SOURCES = ("auto", "pairs", "captions", "both")


def training_examples(
    split, max_items: int | None = None, text_source: str = "auto"
) -> list[TrainExample]:
    """The examples of a split: items with an image and at least one text.

    Args:
        split: the training split.
        max_items: keep only the first N examples.
        text_source: where an item's texts come from. ``"auto"``: ``split.pairs`` (the training
            pairs: Track2 label texts, MUGE/tianchi query texts), else the item's captions, else
            the query texts the relevance marks it relevant to. ``"captions"``: the captions
            only (seed 001 samples one of an image's three captions per step); ``"pairs"``: the
            pairs only; ``"both"``: pairs and captions together.

    The group is the item's attribute string when it has one (Track2), else its set of texts
    (items with the same texts are interchangeable); texts shared by items of different groups
    are caught by the text-identity key (see ``example_keys``).
    """
    if text_source not in TEXT_SOURCES:
        raise XmrError(
            f"unknown text source '{text_source}' (choose from {', '.join(TEXT_SOURCES)})"
        )
    inverse = None
    examples: list[TrainExample] = []
    skipped = 0
    for iid, item in split.items.items():
        if item.image is None:
            skipped += 1
            continue
        pairs, captions = list(split.pairs.get(iid) or []), list(item.captions or [])
        if text_source == "pairs":
            texts = pairs
        elif text_source == "captions":
            texts = captions
        elif text_source == "both":
            texts = pairs + captions
        else:
            texts = pairs or captions
            if not texts:
                if inverse is None:
                    inverse = split.item_relevance()
                qids = sorted(inverse.get(iid, ()))
                texts = [split.queries[q].text for q in qids if q in split.queries]
        texts = list(dict.fromkeys(t for t in texts if t and t.strip()))
        if not texts:
            skipped += 1
            continue
        # Without an attribute, items described by exactly the same texts are one group (a CSV
        # or MUGE export of many-to-many data lists every relevant text for every image).
        group = (
            f"attr:{item.attribute}" if item.attribute else "texts:" + "\x1f".join(sorted(texts))
        )
        captions = tuple(c for c in captions if c and c.strip())
        examples.append(TrainExample(iid, item.image, texts, group, captions))
        if max_items is not None and len(examples) >= max_items:
            break
    if skipped:
        log.warning(
            "split '%s': %d item(s) without an image or a text are not trained on",
            split.name,
            skipped,
        )
    if not examples:
        raise XmrError(
            f"split '{split.name}' has no training pairs (items with an image and a text)"
        )
    return examples


def example_keys(example: TrainExample, text: str) -> tuple[int, int, int]:
    """Group keys of one row: relevance group, the sampled text's identity, the item itself.

    Two rows are positives when any key matches: same attribute (Track2), the same text (one
    query describing several items, as in MUGE), or the same item (an item repeated in a batch).
    """
    return (
        group_key(example.group),
        group_key(f"text:{text}"),
        group_key(f"item:{example.item_id}"),
    )


class BatchPlan:
    """Which examples and texts each rank trains on at each step.

    Args:
        n_texts: number of texts of each example.
        micro_batch: examples per rank per micro-batch.
        world_size: data-parallel ranks.
        accum_steps: micro-batches per optimiser step.
        seed: the plan's seed.
    """

    def __init__(
        self, n_texts: Sequence[int], micro_batch: int, world_size: int, accum_steps: int, seed: int
    ) -> None:
        self.n_texts = np.asarray(n_texts, dtype=np.int64)
        self.micro_batch = int(micro_batch)
        self.world_size = int(world_size)
        self.accum_steps = int(accum_steps)
        self.seed = int(seed)
        self.global_micro = self.micro_batch * self.world_size
        self.step_size = self.global_micro * self.accum_steps
        self.steps_per_epoch = len(self.n_texts) // self.step_size
        if self.steps_per_epoch < 1:
            raise XmrError(
                f"{len(self.n_texts)} training examples do not fill one step of "
                f"{self.step_size} (batch_size {self.micro_batch} x {self.world_size} rank(s) x "
                f"accum_steps {self.accum_steps}); lower batch_size"
            )
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(permutation of example indices, chosen text index of each example) for ``epoch``."""
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x7E57])
            perm = rng.permutation(len(self.n_texts))
            draws = rng.integers(0, np.iinfo(np.int64).max, len(self.n_texts))
            self._cache = (epoch, perm, draws % self.n_texts)
        return self._cache[1], self._cache[2]

    def micro_batches(self, epoch: int, step: int, rank: int) -> list[list[tuple[int, int]]]:
        """``accum_steps`` lists of ``(example index, text index)`` for ``rank`` at ``step``."""
        perm, text_idx = self.epoch_order(epoch)
        out = []
        base = step * self.step_size
        for m in range(self.accum_steps):
            start = base + m * self.global_micro + rank * self.micro_batch
            rows = perm[start : start + self.micro_batch]
            out.append([(int(i), int(text_idx[i])) for i in rows])
        return out

    def positions(
        self, start_epoch: int, start_step: int, epochs: int
    ) -> Iterator[tuple[int, int]]:
        """(epoch, step) from a resume point to the end of training."""
        for epoch in range(start_epoch, epochs):
            for step in range(start_step if epoch == start_epoch else 0, self.steps_per_epoch):
                yield epoch, step


# --- images ------------------------------------------------------------------------------------


# The one image dataset / collate / worker set-up (shared with encoding), under the names the
# training code uses.
TrainImageDataset = ImageDataset
collate = collate_images
_worker_init = worker_init


class _PlanSampler:
    """The DataLoader's batch sampler: the example indices of every micro-batch this rank loads,
    from the resume point to the end (one loader for the whole run: no worker restart per
    epoch)."""

    def __init__(self, plan: BatchPlan, rank: int, start: tuple[int, int], epochs: int) -> None:
        self.plan, self.rank, self.start, self.epochs = plan, rank, start, epochs

    def __iter__(self):
        for epoch, step in self.plan.positions(self.start[0], self.start[1], self.epochs):
            for micro in self.plan.micro_batches(epoch, step, self.rank):
                yield [i for i, _ in micro]

    def __len__(self) -> int:
        total = (self.epochs - self.start[0]) * self.plan.steps_per_epoch - self.start[1]
        return max(0, total) * self.plan.accum_steps


def image_loader(
    refs: Sequence[object],
    preprocess: Callable,
    plan: BatchPlan,
    rank: int,
    start: tuple[int, int],
    epochs: int,
    workers: int,
    draft_size=None,
    pin_memory: bool = False,
    seed: int = 0,
):
    """A DataLoader yielding ``(indices, pixels, failed)`` per micro-batch, in plan order.

    It gets its own generator: starting its workers must not draw from the global torch RNG,
    or a resumed run's dropout masks would differ from the uninterrupted run's."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        TrainImageDataset(refs, preprocess, draft_size),
        batch_sampler=_PlanSampler(plan, rank, start, epochs),
        num_workers=int(workers),
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(int(seed)),
    )


def cached_image_loader(cache, plan: BatchPlan, rank: int, start: tuple[int, int], epochs: int):
    """The same batches as ``image_loader``, from a preprocessed ``(N, ...)`` tensor in memory."""
    import torch

    for indices in _PlanSampler(plan, rank, start, epochs):
        yield indices, cache[torch.as_tensor(indices)], []


def preprocess_all(refs, preprocess, workers: int, draft_size=None, batch_size: int = 256):
    """Decode and preprocess every image once into one tensor (for ``cache_images``); returns
    ``(tensor, failed)`` where failed images hold zeros and are listed by index."""
    import torch
    from torch.utils.data import DataLoader

    dataset = TrainImageDataset(refs, preprocess, draft_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=int(workers),
        collate_fn=collate,
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
    )
    cache = None
    failed: list[tuple[int, str]] = []
    for indices, pixels, bad in loader:
        failed.extend(bad)
        if pixels is None:
            continue
        if cache is None:
            cache = torch.zeros((len(refs), *pixels.shape[1:]), dtype=pixels.dtype)
        cache[torch.as_tensor(indices)] = pixels
    if cache is None:
        raise XmrError("no training image could be decoded")
    return cache, failed


def cache_size_mb(n_images: int, preprocess) -> float | None:
    """Memory a float32 cache of ``n_images`` preprocessed images takes, None when unknown
    (variable-size outputs such as NaFlex)."""
    size = getattr(preprocess, "output_size", None)
    if size is None or getattr(preprocess, "mode", None) == "naflex":
        return None
    h, w = size
    return n_images * 3 * h * w * 4 / 2**20
