"""Contrastive losses for two-tower training: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss.

Both take *L2-normalised* features. Under data parallelism every rank passes its local features
plus the features of the whole global batch (gathered with gradients, see ``distributed``); the
rank scores its own rows against all columns ("local loss", as open_clip's ``local_loss=True``).
With a gather whose backward sums gradients over ranks and DDP averaging parameter gradients,
this gives exactly the gradient of the loss over the global batch, at ``1 / world`` of the cost
of every rank scoring the full ``N x N`` matrix.

Many-to-many data: in Track2 thousands of images share one attribute string and one text, so a
batch routinely holds two images of the same group. Plain InfoNCE would treat the second as a
negative and push a true match away. Every example carries *group keys* (int64 hashes: the
relevance group, e.g. the Track2 attribute, and the identity of its sampled text); image ``i``
and text ``j`` are positives when any key matches, and always on the diagonal.

``multi_positive`` decides what positives do:

- ``"soft"`` (default): the cross-entropy target of a row is spread uniformly over its positives
  (``target = P / P.sum(1)``). This is SupCon's ``L_out`` form (Khosla et al. 2020), which they
  found better than the alternatives, and it pulls *every* true match of a query up, not only the
  one the example was paired with. That is what mAP@10 over many relevant images rewards. A
  row with a single positive reduces to ordinary InfoNCE, so nothing changes on one-to-one data.
- ``"mask"``: the paired column stays the only target and the other positives are removed from
  the softmax denominator (set to -inf): true matches are neither pushed away nor pulled.
- ``"none"``: plain CLIP InfoNCE (other positives are negatives); for ablations.

For SigLIP, positives simply get label +1 (the sigmoid loss is multi-label by nature).

Label smoothing (CLIP loss, ``label_smoothing = eps``, default 0): LAVIS's BLIP-2 Q-Former ITC
takes ``cross_entropy(..., label_smoothing=0.1)`` in both directions. The smoothed target of a row
is ``(1 - eps) * target + eps / C``, ``target`` being the row's target above (one-hot on the
paired column, or ``P / P.sum(1)`` spread over its positives with ``"soft"``) and ``C`` the number
of columns in the row's softmax: all of them, but without the masked positives with ``"mask"``.
So with several positives the ``1 - eps`` mass is shared by the positives (``"soft"``) or goes to
the paired column (``"mask"``, ``"none"``), and the ``eps`` mass is spread evenly over every
candidate column, positives included. A single-positive row gets exactly
``torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps)``; ``eps = 0`` is the
unsmoothed loss, computed by the same code as without the option.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from xmr.errors import XmrError
from xmr.registry import Registry

MULTI_POSITIVE_MODES = ("soft", "mask", "none")

LOSSES: Registry = Registry("loss")
register_loss = LOSSES.register


def group_key(value: str) -> int:
    """A stable signed 64-bit hash of a group name (the same on every rank and every run; Python's
    ``hash`` is salted per process)."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def group_keys(groups: Iterable[Sequence[str]]) -> torch.Tensor:
    """``(N, G)`` int64 keys from ``N`` tuples of ``G`` group names."""
    rows = [[group_key(g) for g in gs] for gs in groups]
    return torch.tensor(rows, dtype=torch.int64)


def row_indices(n_rows: int, row_index: torch.Tensor | int | None, device) -> torch.Tensor:
    """The global column index of each local row: ``row_index`` itself, or ``offset + arange``."""
    if isinstance(row_index, torch.Tensor):
        return row_index.to(device=device, dtype=torch.long)
    return torch.arange(n_rows, device=device) + int(row_index or 0)


def positive_mask(
    row_keys: torch.Tensor, col_keys: torch.Tensor, row_index: torch.Tensor | int | None = None
) -> torch.Tensor:
    """``P[i, j]`` = row ``i`` and column ``j`` share any key, or are the same example.

    Args:
        row_keys: ``(R, G)`` keys of the local rows; ``(R,)`` is taken as one key per row.
        col_keys: ``(C, G)`` keys of all columns (the global batch).
        row_index: global column index of each row (a tensor), or the index of the first row
            (an int: rows are contiguous, as ``rank * local batch size``); default 0.
    """
    if row_keys.ndim == 1:
        row_keys = row_keys[:, None]
    if col_keys.ndim == 1:
        col_keys = col_keys[:, None]
    pos = (row_keys[:, None, :] == col_keys[None, :, :]).any(dim=-1)
    own = row_indices(row_keys.shape[0], row_index, pos.device)
    pos[torch.arange(row_keys.shape[0], device=pos.device), own] = True
    return pos


def multi_positive_cross_entropy(
    logits: torch.Tensor,
    positives: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "soft",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean over rows of the cross-entropy of ``logits`` (R, C).

    Args:
        positives: ``(R, C)`` bool, True where the column is a true match of the row.
        targets: ``(R,)`` index of each row's own (paired) column.
        mode: ``"soft"``, ``"mask"`` or ``"none"`` (see the module docstring).
        label_smoothing: ``eps`` in [0, 1): the share of each row's target spread evenly over
            its softmax's columns (module docstring); 0 is the unsmoothed loss.
    """
    logits = logits.float()
    if label_smoothing:
        return _smoothed_cross_entropy(logits, positives, targets, mode, float(label_smoothing))
    if mode == "none":
        return F.cross_entropy(logits, targets)
    if mode == "mask":
        own = torch.zeros_like(positives)
        own[torch.arange(own.shape[0], device=own.device), targets] = True
        logits = logits.masked_fill(positives & ~own, float("-inf"))
        return F.cross_entropy(logits, targets)
    if mode == "soft":
        weights = positives.float()
        weights = weights / weights.sum(dim=1, keepdim=True)
        return -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    raise XmrError(
        f"unknown multi_positive mode '{mode}' (choose from {', '.join(MULTI_POSITIVE_MODES)})"
    )


def _smoothed_cross_entropy(logits, positives, targets, mode: str, eps: float) -> torch.Tensor:
    """:func:`multi_positive_cross_entropy` with label smoothing ``eps`` > 0."""
    if mode == "none":
        return F.cross_entropy(logits, targets, label_smoothing=eps)
    rows = torch.arange(logits.shape[0], device=logits.device)
    own = torch.zeros_like(positives)
    own[rows, targets] = True
    if mode == "mask":
        # The other positives leave the softmax, so they get no smoothing mass either
        # (a share of -inf would make the loss infinite).
        kept = ~(positives & ~own)
        target = own.float()
    elif mode == "soft":
        kept = torch.ones_like(positives)
        target = positives.float() / positives.float().sum(dim=1, keepdim=True)
    else:
        raise XmrError(
            f"unknown multi_positive mode '{mode}' (choose from {', '.join(MULTI_POSITIVE_MODES)})"
        )
    uniform = kept.float() / kept.float().sum(dim=1, keepdim=True)
    smoothed = (1.0 - eps) * target + eps * uniform
    log_p = F.log_softmax(logits.masked_fill(~kept, float("-inf")), dim=1)
    # Columns outside the softmax have zero target weight: leave them out of the sum (0 * -inf).
    return -(smoothed * log_p.masked_fill(~kept, 0.0)).sum(dim=1).mean()


def image_text_similarity(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(I, T)`` cosine scores of normalised image features ``(I, D)`` or ``(I, K, D)`` and text
    features ``(T, D)``: with K vectors per image (BLIP-2's query tokens) the score is
    ``max_k <v_ik, t>``, as LAVIS's ITC loss takes it (``sim_i2t = sim_q2t.max(-1)``) and
    ``xmr.vectors.max_sim`` scores it at search time."""
    if image.ndim == 2:
        return image @ text.t()
    return torch.einsum("ikd,td->itk", image, text).amax(dim=-1)


def text_image_similarity(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``(T, I)``: :func:`image_text_similarity` transposed (the text->image logits)."""
    if image.ndim == 2:
        return text @ image.t()
    return torch.einsum("td,ikd->tik", text, image).amax(dim=-1)


class ContrastiveLoss(torch.nn.Module):
    """Base class: ``forward`` returns a scalar loss for the local rows.

    Args (of ``forward``):
        image_local, text_local: ``(B, D)`` normalised features of this rank's examples (images
            may be ``(B, K, D)``: K vectors each, scored by their max, see
            :func:`image_text_similarity`).
        image_all, text_all: ``(N, D)`` features of the global batch (``N = world * B``); the
            local tensors when not distributed.
        keys_local, keys_all: ``(B, G)`` / ``(N, G)`` int64 group keys (see ``positive_mask``).
        logit_scale: the log of the inverse temperature (a scalar tensor).
        logit_bias: SigLIP's bias (a scalar tensor), or None.
        row_index: where the local rows sit among the columns: a ``(B,)`` tensor of global
            indices, or the int index of the first row (contiguous rows: ``rank * B``).
    """

    def forward(  # noqa: D102 - documented on the class
        self,
        image_local: torch.Tensor,
        text_local: torch.Tensor,
        image_all: torch.Tensor,
        text_all: torch.Tensor,
        keys_local: torch.Tensor,
        keys_all: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        row_index: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


@register_loss("clip")
class ClipLoss(ContrastiveLoss):
    """Symmetric InfoNCE (CLIP): the mean of image->text and text->image cross-entropies over
    ``exp(logit_scale) * cosine`` logits, with multi-positive targets and optional label
    smoothing (module docstring; BLIP-2's ITC as LAVIS trains it is ``label_smoothing=0.1``)."""

    needs_bias = False

    def __init__(self, multi_positive: str = "soft", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if multi_positive not in MULTI_POSITIVE_MODES:
            raise XmrError(
                f"unknown multi_positive mode '{multi_positive}' "
                f"(choose from {', '.join(MULTI_POSITIVE_MODES)})"
            )
        check_label_smoothing(label_smoothing)
        self.multi_positive = multi_positive
        self.label_smoothing = float(label_smoothing)

    def forward(
        self,
        image_local,
        text_local,
        image_all,
        text_all,
        keys_local,
        keys_all,
        logit_scale,
        logit_bias=None,
        row_index=None,
    ):
        scale = logit_scale.float().exp()
        image_local, text_local = image_local.float(), text_local.float()
        image_all, text_all = image_all.float(), text_all.float()
        logits_i2t = scale * image_text_similarity(image_local, text_all)
        logits_t2i = scale * text_image_similarity(text_local, image_all)
        positives = positive_mask(keys_local, keys_all, row_index)
        targets = row_indices(image_local.shape[0], row_index, image_local.device)
        mode, eps = self.multi_positive, self.label_smoothing
        loss_i2t = multi_positive_cross_entropy(logits_i2t, positives, targets, mode, eps)
        loss_t2i = multi_positive_cross_entropy(logits_t2i, positives, targets, mode, eps)
        return (loss_i2t + loss_t2i) / 2


@register_loss("siglip")
class SigLipLoss(ContrastiveLoss):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every (image, text) pair is a binary
    problem, label +1 for positives (all of them, multi-positive by nature) and -1 otherwise;
    ``-sum log sigmoid(label * (exp(t) * cos + b))`` divided by the number of images. Summed over
    the rows of all ranks and divided by the global batch, it equals the paper's loss."""

    needs_bias = True

    def __init__(self, multi_positive: str = "soft") -> None:
        super().__init__()
        # "none" makes other positives negatives, as the paper's one-to-one labels do.
        self.multi_positive = multi_positive

    def forward(
        self,
        image_local,
        text_local,
        image_all,
        text_all,
        keys_local,
        keys_all,
        logit_scale,
        logit_bias=None,
        row_index=None,
    ):
        logits = logit_scale.float().exp() * image_text_similarity(
            image_local.float(), text_all.float()
        )
        if logit_bias is not None:
            logits = logits + logit_bias.float()
        if self.multi_positive == "none":
            positives = torch.zeros_like(logits, dtype=torch.bool)
            rows = torch.arange(logits.shape[0], device=logits.device)
            positives[rows, row_indices(logits.shape[0], row_index, logits.device)] = True
        else:
            positives = positive_mask(keys_local, keys_all, row_index)
        labels = positives.float() * 2 - 1
        return -F.logsigmoid(labels * logits).sum() / image_local.shape[0]


def check_label_smoothing(value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise XmrError(f"label_smoothing must be in [0, 1), got {value}")


def create_loss(
    name: str, multi_positive: str = "soft", label_smoothing: float = 0.0
) -> ContrastiveLoss:
    """The registered loss ``name`` ("clip" or "siglip"); ``label_smoothing`` > 0 is passed
    only to losses that take it (CLIP's; SigLIP's sigmoid loss has no softmax to smooth)."""
    factory = LOSSES.get(name)
    if not label_smoothing:
        return factory(multi_positive=multi_positive)
    try:
        return factory(multi_positive=multi_positive, label_smoothing=label_smoothing)
    except TypeError:
        raise XmrError(
            f"the {name!r} loss takes no label_smoothing (it smooths a softmax cross-entropy: "
            "loss=clip)"
        ) from None


# SigLIP's initialisation (paper, section 3): t' = log 10, b = -10.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0
