"""Label smoothing of the CLIP loss (LAVIS's BLIP-2 ITC: ``cross_entropy(..., label_smoothing=0.1)``):
0 is the current loss exactly, single-positive batches equal torch's smoothed cross-entropy, and
several positives share the unsmoothed mass while the smoothing is spread over the columns."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from xmr.errors import XmrError  # noqa: E402
from xmr.train.config import TrainConfig, trajectory_differences  # noqa: E402
from xmr.train.losses import (  # noqa: E402
    ClipLoss,
    create_loss,
    image_text_similarity,
    multi_positive_cross_entropy,
    text_image_similarity,
)

MODES = ("soft", "mask", "none")


def _features(seed: int, n: int = 6, k: int = 3, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, k, d, generator=g), dim=-1)  # BLIP-2: K query tokens
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return image, text


def _loss(loss, image, text, keys):
    scale = torch.tensor(2.5)
    return loss(image, text, image, text, keys, keys, scale)


@pytest.mark.parametrize("mode", MODES)
def test_zero_smoothing_is_the_current_loss_exactly(mode):
    image, text = _features(0)
    keys = torch.tensor([[1], [2], [1], [3], [2], [4]])  # several positives per row
    assert torch.equal(
        _loss(ClipLoss(mode), image, text, keys),
        _loss(ClipLoss(mode, label_smoothing=0.0), image, text, keys),
    )
    assert torch.equal(
        _loss(create_loss("clip", mode), image, text, keys),
        _loss(create_loss("clip", mode, 0.0), image, text, keys),
    )


@pytest.mark.parametrize("mode", MODES)
def test_single_positive_batches_equal_torch_label_smoothing(mode):
    image, text = _features(1)
    keys = torch.arange(6)[:, None]  # one positive per row: the diagonal
    ours = _loss(ClipLoss(mode, label_smoothing=0.1), image, text, keys)
    # LAVIS's loss_itc: both directions, max over the query tokens, smoothed 0.1, averaged.
    scale = torch.tensor(2.5).exp()
    targets = torch.arange(6)
    i2t = scale * torch.einsum("ikd,td->itk", image, text).amax(-1)
    t2i = scale * torch.einsum("td,ikd->tik", text, image).amax(-1)
    reference = (
        F.cross_entropy(i2t, targets, label_smoothing=0.1)
        + F.cross_entropy(t2i, targets, label_smoothing=0.1)
    ) / 2
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(ours, _loss(ClipLoss(mode), image, text, keys))
    torch.testing.assert_close(i2t, scale * image_text_similarity(image, text))
    torch.testing.assert_close(t2i, scale * text_image_similarity(text, image))


def test_several_positives_share_the_mass_and_the_smoothing_is_spread_evenly():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, generator=g)
    positives = torch.tensor(
        [
            [True, False, True, False, False],
            [False, True, False, False, False],
            [True, True, False, True, False],
        ]
    )
    targets = torch.tensor([0, 1, 3])
    eps = 0.1
    log_p = F.log_softmax(logits, dim=1)
    # soft: (1 - eps) split over the positives, eps / C on every column.
    soft = (1 - eps) * positives.float() / positives.sum(1, keepdim=True) + eps / 5
    expected = -(soft * log_p).sum(1).mean()
    ours = multi_positive_cross_entropy(logits, positives, targets, "soft", eps)
    torch.testing.assert_close(ours, expected)
    # mask: the other positives leave the softmax; eps is spread over the columns left.
    rows = []
    for r in range(3):
        kept = [c for c in range(5) if c == targets[r] or not positives[r, c]]
        lp = F.log_softmax(logits[r, kept], dim=0)
        t = torch.tensor([(1 - eps) * (c == targets[r]) + eps / len(kept) for c in kept])
        rows.append(-(t * lp).sum())
    mask = multi_positive_cross_entropy(logits, positives, targets, "mask", eps)
    assert torch.isfinite(mask)
    torch.testing.assert_close(mask, torch.stack(rows).mean())
    # none: torch's own smoothed cross-entropy on the paired column.
    torch.testing.assert_close(
        multi_positive_cross_entropy(logits, positives, targets, "none", eps),
        F.cross_entropy(logits, targets, label_smoothing=eps),
    )


def test_the_option_is_checked_and_part_of_the_trajectory():
    base = dict(model="m", data="d", out="o")
    cfg = TrainConfig(**base).validate()
    assert cfg.label_smoothing == 0.0
    smoothed = TrainConfig(**base, label_smoothing=0.1).validate()
    # A run resumed with another smoothing is refused like any trajectory setting.
    assert trajectory_differences(cfg, smoothed) == ["label_smoothing: 0.0 != 0.1"]
    assert TrainConfig.from_dict(smoothed.to_dict()).label_smoothing == 0.1
    for bad in (-0.1, 1.0):
        with pytest.raises(XmrError, match="'label_smoothing' must be in"):
            TrainConfig(**base, label_smoothing=bad).validate()
    with pytest.raises(XmrError, match="loss=siglip has none"):
        TrainConfig(**base, loss="siglip", label_smoothing=0.1).validate()
    with pytest.raises(XmrError, match="takes no label_smoothing"):
        create_loss("siglip", "soft", 0.1)
    with pytest.raises(XmrError, match="in \\[0, 1\\)"):
        ClipLoss(label_smoothing=1.5)
