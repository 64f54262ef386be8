"""One step of fusion training: the trainable gate (the torch twin of ``GatedFusion``), the
item embeddings on the device, and the InfoNCE step over a batch of (query, item) pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xmr.fusion import GatedFusion
from xmr.train.fusion_data import FusionData
from xmr.train.optim import optimizer_update


class Gate:
    """The torch twin of GatedFusion (same formula, trainable)."""

    def __init__(self, start: GatedFusion, device: Any) -> None:
        import torch

        self.bias = torch.nn.Parameter(torch.tensor(start.bias, device=device))
        self.weight = (
            torch.nn.Parameter(torch.tensor(start.weight, device=device))
            if start.weight is not None
            else None
        )

    def parameters(self) -> list[Any]:
        return [p for p in (self.bias, self.weight) if p is not None]

    def fuse(self, img, cap, no_img, no_cap):
        """``img`` ``(C, K, D)``, ``cap`` ``(C, D)``, the flags ``(C,)``: ``(C, K, D)``, each
        of the K image vectors fused with the caption (as ``Fusion.fuse`` does)."""
        import torch

        cap = cap[:, None, :].expand_as(img)
        z = self.bias.expand_as(img)
        if self.weight is not None:
            z = z + torch.cat([img, cap], dim=-1) @ self.weight.T
        g = torch.sigmoid(z)
        mixed = torch.nn.functional.normalize(g * img + (1 - g) * cap, dim=-1, eps=1e-12)
        mixed = torch.where(no_img[:, None, None], cap, mixed)
        return torch.where(no_cap[:, None, None], img, mixed)

    def export(self) -> GatedFusion:
        weight = None if self.weight is None else self.weight.detach().cpu().numpy()
        return GatedFusion(self.bias.detach().cpu().numpy(), weight)


@dataclass
class ItemTensors:
    """A split's embeddings on the training device (missing sides as zeros plus a flag); the
    image side is ``(N, K, D)`` (K=1 for a single-vector encoder), the captions ``(N, D)``."""

    image: Any
    caption: Any
    no_image: Any
    no_caption: Any
    queries: Any
    device: Any

    @classmethod
    def of(cls, data: FusionData, device: Any) -> ItemTensors:
        import torch

        def as_t(a):
            return torch.tensor(a, device=device)

        items = data.items
        image = np.nan_to_num(items.image)
        return cls(
            as_t(image.reshape(len(image), items.image_vectors, -1)),
            as_t(np.nan_to_num(items.caption)),
            as_t(items.no_image),
            as_t(items.no_caption),
            as_t(data.query_emb),
            device,
        )

    def tensor(self, array: np.ndarray) -> Any:
        import torch

        return torch.tensor(array, device=self.device)


def fusion_step(
    gate: Gate,
    optimizer: Any,
    tensors: ItemTensors,
    pairs: np.ndarray,
    cand: np.ndarray,
    positive: np.ndarray,
    temperature: float,
) -> float:
    """One step: InfoNCE of the queries of ``pairs`` (query row, item row) against the fused
    candidates ``cand`` (``positive``: query x candidate relevance), and the update. A
    candidate scores ``max_k q . fused_k`` (max-sim over its K vectors, as evaluation ranks)."""
    import torch

    cand_t = tensors.tensor(cand)
    fused = gate.fuse(
        tensors.image[cand_t],
        tensors.caption[cand_t],
        tensors.no_image[cand_t],
        tensors.no_caption[cand_t],
    )
    queries = tensors.queries[tensors.tensor(pairs[:, 0])]
    logits = torch.einsum("bd,ckd->bck", queries, fused).amax(-1) / temperature
    positive = tensors.tensor(positive)
    loss = (
        torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), 1)
    ).mean()
    loss.backward()
    optimizer_update(optimizer, gate.parameters())
    return float(loss.detach())
