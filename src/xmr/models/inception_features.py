"""Inception features of many images: decoded and resized in DataLoader workers, run in batches.

Each image is decoded to RGB, turned into float pixels in [0, 255] at its own size and resized to
299x299 with TF 1.x's bilinear rule in the worker (per image, so sets of mixed sizes batch), then
the network runs on batches on the Inception's device. This is torch-fidelity's pipeline (uint8
image -> float -> TF resize -> (x - 128) / 128) one image at a time, which gives the same numbers
as its batched resize: every output pixel depends on its own image only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from xmr.data.images import ImageRef, decode_image
from xmr.errors import DataError
from xmr.models.inception import INPUT_SIZE, FIDInception, resize_like_tensorflow1x


def image_to_pixels(image: Any) -> torch.Tensor:
    """(3, 299, 299) float32 pixels in [0, 255] of an ImageRef, encoded bytes or PIL image."""
    if isinstance(image, ImageRef):
        image = image.open()
    elif isinstance(image, bytes | bytearray):
        image = decode_image(bytes(image))
    elif hasattr(image, "convert"):
        image = image.convert("RGB")
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}")
    array = np.asarray(image, dtype=np.uint8)
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32)
    return resize_like_tensorflow1x(pixels[None], INPUT_SIZE)[0]


class _Pixels(torch.utils.data.Dataset):
    """Images as pixels; a bad image comes back as its error message (a worker's exception
    would reach the main process as text without its file and line)."""

    def __init__(self, images: Sequence[Any]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return image_to_pixels(self.images[index]), ""
        except DataError as exc:
            return torch.zeros(3, INPUT_SIZE, INPUT_SIZE), str(exc) or "undecodable image"


def extract_inception_features(
    net: FIDInception,
    images: Sequence[Any],
    *,
    batch_size: int = 50,
    workers: int = 0,
    logits: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pool features (N, 2048) and unbiased logits (N, 1008) of ``images``, as float64.

    Args:
        net: a loaded Inception (``load_fid_inception``).
        images: ImageRefs, encoded bytes or PIL images.
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding and resizing (0: in this process).
        logits: also compute the logits (IS); False returns None for them.
        progress: called with the number of images done after each batch.

    Raises:
        DataError: an image does not decode (names its file and line).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    loader = torch.utils.data.DataLoader(
        _Pixels(images),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=net.device.type == "cuda",
    )
    pools, outs, done = [], [], 0
    for pixels, errors in loader:
        bad = [e for e in errors if e]
        if bad:
            raise DataError(bad[0])
        pool = net.pool(pixels)
        pools.append(pool.double().cpu().numpy())
        if logits:
            outs.append(net.logits(pool).double().cpu().numpy())
        done += len(pixels)
        if progress is not None:
            progress(done)
    empty = np.zeros((0, 2048))
    pool_all = np.concatenate(pools) if pools else empty
    logits_all = (np.concatenate(outs) if outs else np.zeros((0, 1008))) if logits else None
    return pool_all, logits_all
