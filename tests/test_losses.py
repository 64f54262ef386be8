"""Contrastive losses: CLIP InfoNCE against a by-hand reference, multi-positive targets on a
hand-made batch where two items share a relevance group, SigLIP's labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xmr.errors import XmrError
from xmr.train.losses import (
    ClipLoss,
    SigLipLoss,
    create_loss,
    group_key,
    multi_positive_cross_entropy,
    positive_mask,
)


def _features(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return image, text


def _keys(groups: list[str]) -> torch.Tensor:
    return torch.tensor([[group_key(g)] for g in groups], dtype=torch.int64)


def test_group_key_is_stable_and_distinct():
    assert group_key("attr:A white SUV.") == group_key("attr:A white SUV.")
    assert group_key("attr:A white SUV.") != group_key("attr:A black SUV.")
    # A fixed value: the key must not depend on Python's per-process hash salt.
    assert group_key("x") == group_key("x") and isinstance(group_key("x"), int)


def test_clip_loss_equals_reference_when_all_groups_differ():
    image, text = _features(5)
    scale = torch.tensor(math.log(10.0))
    keys = _keys(["a", "b", "c", "d", "e"])
    logits = 10.0 * image @ text.T
    targets = torch.arange(5)
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    for mode in ("soft", "mask", "none"):
        loss = ClipLoss(mode)(image, text, image, text, keys, keys, scale)
        assert torch.allclose(loss, expected, atol=1e-6), mode


def test_positive_mask_of_a_hand_made_batch():
    # Items 0 and 2 share an attribute (one relevance group); item 3 shares item 1's text.
    keys = torch.tensor(
        [
            [group_key("attr:red car"), group_key("text:a red car"), 0],
            [group_key("attr:blue van"), group_key("text:a van"), 1],
            [group_key("attr:red car"), group_key("text:red car."), 2],
            [group_key("attr:green van"), group_key("text:a van"), 3],
        ]
    )
    pos = positive_mask(keys, keys)
    expected = torch.tensor(
        [
            [1, 0, 1, 0],
            [0, 1, 0, 1],
            [1, 0, 1, 0],
            [0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(pos, expected)
    # Local rows 2..3 of a global batch of 4 (rank 1 of 2).
    assert torch.equal(positive_mask(keys[2:], keys, 2), expected[2:])


def test_multi_positive_soft_targets_by_hand():
    # Two items of the same group: text 0 is a true match of images 0 and 2.
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 2.0]])
    pos = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    targets = torch.arange(3)
    logp = F.log_softmax(logits, dim=1)
    soft = multi_positive_cross_entropy(logits, pos, targets, "soft")
    expected_soft = (
        -((logp[0, 0] + logp[0, 2]) / 2 + logp[1, 1] + (logp[2, 0] + logp[2, 2]) / 2) / 3
    )
    assert torch.allclose(soft, expected_soft)
    # "mask": the other positive leaves the denominator.
    mask = multi_positive_cross_entropy(logits, pos, targets, "mask")
    row0 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0)))
    row1 = -logp[1, 1]
    row2 = -(2.0 - math.log(math.exp(0.0) + math.exp(2.0)))
    assert torch.allclose(mask, (row0 + row1 + row2) / 3)
    # "none": the shared-group item is a negative.
    none = multi_positive_cross_entropy(logits, pos, targets, "none")
    assert torch.allclose(none, F.cross_entropy(logits, targets))
    with pytest.raises(XmrError):
        multi_positive_cross_entropy(logits, pos, targets, "bogus")


def test_shared_group_is_not_pushed_apart():
    """Images 0 and 1 show the same attribute and texts 0 and 1 are its phrasings. With plain
    InfoNCE the gradient pushes image 0 away from text 1 (a true match); with soft
    multi-positive targets it pulls them together, and masking leaves that pair alone."""
    # Each image is closest to its own text; image 0 is far from text 1 (its other true match).
    image = torch.tensor(
        [[1.0, 0.1, 0.3, 0.2], [0.1, 1.0, 0.2, 0.3], [0.2, 0.1, 1.0, 0.1], [0.1, 0.2, 0.2, 1.0]]
    )
    image = F.normalize(image, dim=-1).requires_grad_(True)
    # Orthonormal texts: the gradient of image 0 along text 1 is exactly dL/d(cos(image0, text1)).
    text = torch.eye(4)
    keys = _keys(["attr:red car", "attr:red car", "attr:blue van", "attr:green bus"])
    scale = torch.tensor(math.log(20.0))

    def pull_on_true_match(mode: str) -> float:
        if image.grad is not None:
            image.grad = None
        ClipLoss(mode)(image, text, image, text, keys, keys, scale).backward()
        # Moving image 0 against its gradient changes its similarity to text 1 by -grad.text1.
        return float(-(image.grad[0] @ text[1]))

    assert pull_on_true_match("none") < 0  # a true match is pushed away
    assert pull_on_true_match("soft") > 0  # and pulled together with soft targets
    # Masking removes the pair from both softmaxes (image 0's row, text 1's row): no force.
    assert abs(pull_on_true_match("mask")) < 1e-7


def test_soft_loss_lower_when_positives_score_high():
    image, text = _features(4, seed=1)
    keys = _keys(["g", "g", "h", "i"])
    scale = torch.tensor(math.log(10.0))
    aligned = image.clone()
    aligned[1] = text[0]  # image 1 equals text 0: the same group, so a match
    loss_fn = ClipLoss("soft")
    base = loss_fn(image, text, image, text, keys, keys, scale)
    better = loss_fn(aligned, text, aligned, text, keys, keys, scale)
    assert better < base


def test_siglip_loss_labels_and_bias():
    image, text = _features(3, seed=2)
    keys = _keys(["g", "g", "h"])
    scale = torch.tensor(math.log(10.0))
    bias = torch.tensor([-5.0])
    logits = 10.0 * image @ text.T - 5.0
    labels = torch.tensor([[1, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float32)
    expected = -F.logsigmoid(labels * logits).sum() / 3
    loss = SigLipLoss()(image, text, image, text, keys, keys, scale, bias)
    assert torch.allclose(loss, expected, atol=1e-6)
    one_to_one = SigLipLoss("none")(image, text, image, text, keys, keys, scale, bias)
    eye = torch.eye(3) * 2 - 1
    assert torch.allclose(one_to_one, -F.logsigmoid(eye * logits).sum() / 3, atol=1e-6)


def test_local_rows_sum_to_the_global_loss():
    """Each rank scores its own rows against all columns; the mean over ranks is the loss of
    the global batch (this is what makes the distributed loss equal the single-process one)."""
    image, text = _features(6, seed=4)
    keys = _keys(["a", "a", "b", "c", "c", "d"])
    scale = torch.tensor(math.log(15.0))
    bias = torch.tensor([-2.0])
    for name in ("clip", "siglip"):
        loss_fn = create_loss(name)
        full = loss_fn(image, text, image, text, keys, keys, scale, bias)
        halves = [
            loss_fn(
                image[r : r + 3],
                text[r : r + 3],
                image,
                text,
                keys[r : r + 3],
                keys,
                scale,
                bias,
                r,
            )
            for r in (0, 3)
        ]
        assert torch.allclose(full, (halves[0] + halves[1]) / 2, atol=1e-6), name
        # Non-contiguous rows given as an index tensor (cached-feature accumulation).
        rows = torch.tensor([0, 2, 4])
        picked = loss_fn(image[rows], text[rows], image, text, keys[rows], keys, scale, bias, rows)
        other = torch.tensor([1, 3, 5])
        rest = loss_fn(
            image[other], text[other], image, text, keys[other], keys, scale, bias, other
        )
        assert torch.allclose(full, (picked + rest) / 2, atol=1e-6), name


def test_unknown_loss_and_mode():
    with pytest.raises(XmrError, match="unknown loss"):
        create_loss("triplet")
    with pytest.raises(XmrError, match="multi_positive"):
        ClipLoss("sometimes")
