"""The one image dataset, collate function and worker set-up for DataLoaders (encode, training,
validation): decoding and per-image preprocessing run in worker processes, never raising on a
bad image, so one corrupt file cannot stop a long run.

Module-level and light: DataLoader workers unpickle these. torch is imported only inside the
functions that need it, so ``xmr.data`` stays importable without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from xmr.errors import DataError


class ImageDataset:
    """Position -> ``(position, transform(decoded image) or None, error or None)``.

    Args:
        refs: the images (``ImageRef``s, or anything with ``open(draft_size=)`` and
            ``describe()``).
        transform: decoded RGB PIL image -> sample (an ``ImagePreprocess``, or its ``crop``
            method for uint8 crops that are normalised per batch).
        draft_size: JPEG draft target ``(width, height)``; default: the transform's own
            ``draft_size`` (set only when draft decoding was asked for), else full decoding.
    """

    def __init__(
        self, refs: Sequence[Any], transform: Callable, draft_size: tuple[int, int] | None = None
    ) -> None:
        self.refs = list(refs)
        self.transform = transform
        owner = getattr(transform, "__self__", transform)  # a bound ``crop`` method's object
        self.draft_size = draft_size or getattr(owner, "draft_size", None)

    # The training code names it ``preprocess``; one attribute, two names.
    @property
    def preprocess(self) -> Callable:
        return self.transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, position: int):
        ref = self.refs[position]
        try:
            image = ref.open(draft_size=self.draft_size)
        except DataError as exc:
            return position, None, str(exc)
        try:
            return position, self.transform(image), None
        except Exception as exc:  # a truncated image can still fail inside PIL's resize
            return position, None, f"{ref.describe()}: cannot preprocess ({exc})"


def collate_images(batch):
    """``[(position, sample or None, error or None)]`` -> ``(ok positions, stacked samples or
    None, [(position, error)])``. NumPy uint8 crops stack into one uint8 tensor (a quarter of
    float32's bytes to pin and copy to the device)."""
    import numpy as np
    import torch
    from torch.utils.data import default_collate

    ok = [(p, x) for p, x, err in batch if err is None]
    failed = [(p, err) for p, _, err in batch if err is not None]
    if not ok:
        return [], None, failed
    samples = [x for _, x in ok]
    if isinstance(samples[0], np.ndarray):
        pixels = torch.from_numpy(np.stack(samples))
    else:
        pixels = default_collate(samples)
    return [p for p, _ in ok], pixels, failed


def worker_init(_worker_id: int) -> None:
    """One torch thread per worker: workers decode, and the model keeps the other cores."""
    import torch

    torch.set_num_threads(1)
