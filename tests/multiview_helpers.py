"""TEST HELPER, not a model: a multi-vector encoder for the tests of multi-vector items.

Until a real multi-vector model (BLIP-2) is in xmr, the tests need an encoder whose images are K
vectors. :class:`KViewsTestEncoder` is a real tiny CLIP (transformers, loaded from its saved
directory) whose image embedding is the K image features of K views of the preprocessed image:
the image itself and copies shifted sideways by a quarter, half, ... of its width. Texts are
CLIP's own (one vector). It is registered as the encoder backend ``kviews-test:<clip dir>`` so
that the real command-line paths (``xmr encode``, ``xmr evaluate --model``, the Searcher that
loads the model named in an index) run with it.
"""

from __future__ import annotations

from typing import Any

import torch

from xmr.models.hf_clip import HFEncoder
from xmr.models.registry import BACKENDS, register_backend

BACKEND = "kviews-test"
VIEWS = 3


class KViewsTestEncoder(HFEncoder):
    """A tiny CLIP with ``VIEWS`` vectors per image (test helper; see the module docstring)."""

    backend = BACKEND
    image_vectors = VIEWS

    def image_features(self, pixel_values: Any) -> torch.Tensor:
        width = pixel_values.shape[-1]
        views = [
            torch.roll(pixel_values, shifts=j * width // (VIEWS + 1), dims=-1) for j in range(VIEWS)
        ]
        return torch.stack([super(KViewsTestEncoder, self).image_features(v) for v in views], dim=1)


def _factory(target: str, **kwargs: Any) -> KViewsTestEncoder:
    encoder = HFEncoder.load(target, **kwargs)
    encoder.__class__ = KViewsTestEncoder
    encoder.spec = f"{BACKEND}:{encoder.spec.partition(':')[2]}"
    return encoder


if BACKEND not in BACKENDS:
    register_backend(BACKEND)(_factory)
