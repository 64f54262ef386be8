"""Text-to-image generation metrics as pure functions: FID, IS, R-precision, CLIP score.

Inputs are features already extracted (Inception pool features and logits, image-text model
embeddings), so each function is checked against its formula and independent implementations.

* **FID** (Heusel et al. 2017), in float64::

      FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))

  with ``S`` the unbiased (n - 1) covariance, as in the TF code, pytorch-fid and torch-fidelity.
  The trace of the matrix square root is computed by symmetric eigendecompositions, not by a
  general ``sqrtm``: ``tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(A S_2 A))`` with
  ``A = S_1^(1/2)`` (the eigenvalues of ``S_1 S_2`` and of the symmetric PSD ``A S_2 A`` are the
  same). Both steps are ``numpy.linalg.eigh`` on symmetric matrices, with round-off negative
  eigenvalues clamped to 0: no complex parts to discard and no failure on the singular
  covariances of fewer than 2049 images, where ``scipy.linalg.sqrtm`` needs pytorch-fid's
  "add eps to the diagonal" retry. With the features of a set of N <= D images at hand,
  ``frechet_distance_to_features`` solves the same trace as an N x N problem.
* **IS** (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` per split, mean and std
  (population std, ``np.std``) over ``splits`` (10) contiguous splits, ``p(y)`` the split's
  mean; from the unbiased logits (pool @ W^T), as the original code and torch-fidelity.
  The original keeps the generation order; ``shuffle_seed=2020`` permutes first as
  torch-fidelity does by default.
* **R-precision** (AttnGAN, Xu et al. 2018): for each generated image, its own text among
  ``candidates - 1`` mismatched texts drawn at random from the set; a hit when its own text
  scores highest (cosine similarity; a tie is a miss). Repeated ``repeats`` times with fresh
  draws from one seeded generator; mean and std over the repeats. xmr draws mismatched texts
  only among texts that differ from the image's own text (a duplicate description is not a
  mismatch), which AttnGAN's caption sampling does not check.
* **CLIP score**: ``scale * max(cos(image, text), 0)`` averaged over pairs; ``scale=100`` as in
  torchmetrics (Hessel et al.'s CLIP-S uses 2.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.errors import XmrError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of (N, D) features; N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise XmrError(f"FID needs at least 2 images, got {len(x) if x.ndim else 0}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S_1 S_2)^(1/2))`` for symmetric PSD ``S_1``, ``S_2``, by eigendecompositions."""
    root = _sqrt_psd(np.asarray(sigma1, dtype=np.float64))
    inner = root @ np.asarray(sigma2, dtype=np.float64) @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise XmrError(
            f"statistics of different dimensions ({mu1.shape[0]} vs {mu2.shape[0]}): "
            "they come from different feature layers"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
    return float(value - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_to_features(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID between (N, D) features and N(mu, sigma), by an N x N problem when N <= D.

    With ``A`` the centred features over ``sqrt(N - 1)`` (so ``S = A^T A``), the non-zero
    eigenvalues of ``S sigma`` are those of the symmetric PSD ``A sigma A^T`` (N x N), so the
    trace term needs one N x N eigendecomposition instead of two D x D ones: the same value,
    and 5000 generated images against 2048-d statistics, or a per-category subset, cost a
    fraction of the D x D route.
    """
    x = np.asarray(features, dtype=np.float64)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise XmrError(f"FID needs at least 2 images, got {len(x) if x.ndim else 0}")
    if x.shape[1] != len(mu) or sigma.shape != (len(mu), len(mu)):
        raise XmrError(
            f"statistics of different dimensions ({x.shape[1]} vs {len(mu)}): "
            "they come from different feature layers"
        )
    n, d = x.shape
    if n > d:
        return frechet_distance(*feature_statistics(x), mu, sigma)
    mean = x.mean(axis=0)
    a = (x - mean) / np.sqrt(n - 1)
    inner = a @ sigma @ a.T
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mean - mu
    return float(diff @ diff + (a * a).sum() + np.trace(sigma) - 2.0 * trace_sqrt)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, D) feature sets (the smaller set takes the N x N route)."""
    small, large = sorted((features1, features2), key=len)
    return frechet_distance_to_features(small, *feature_statistics(large))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(
    logits: np.ndarray, splits: int = 10, shuffle_seed: int | None = None
) -> tuple[float, float]:
    """Inception score ``(mean, std)`` over ``splits`` splits of (N, C) logits.

    Args:
        logits: class logits per image (torch-fidelity's ``logits_unbiased``).
        splits: number of contiguous splits (10 in the original and every library).
        shuffle_seed: permute the images with ``np.random.RandomState(seed)`` first
            (torch-fidelity: 2020); None keeps their order (the original code).
    """
    x = np.asarray(logits, dtype=np.float64)
    n = len(x)
    if x.ndim != 2 or n < splits or splits < 1:
        raise XmrError(f"IS with {splits} splits needs at least {splits} images, got {n}")
    if shuffle_seed is not None:
        x = x[np.random.RandomState(shuffle_seed).permutation(n)]
    log_p = _log_softmax(x)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part, log_part = (
            p[i * n // splits : (i + 1) * n // splits],
            log_p[i * n // splits : (i + 1) * n // splits],
        )
        log_marginal = np.log(part.mean(axis=0, keepdims=True))
        kl = (part * (log_part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def r_precision(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    texts: Sequence[str] | None = None,
    *,
    candidates: int = 100,
    repeats: int = 10,
    seed: int = 0,
    chunk: int = 1024,
) -> dict[str, Any]:
    """AttnGAN's R-precision: image ``i``'s own text ``i`` against ``candidates - 1`` others.

    Args:
        image_embeddings: (N, D) embeddings of the generated images.
        text_embeddings: (N, D) embeddings of their texts (row ``i`` describes image ``i``).
        texts: the texts themselves; when given, a mismatched candidate is never a text equal
            to the image's own.
        candidates: texts ranked per image (100: the own one and 99 mismatched).
        repeats: independent draws of the mismatched texts.
        seed: seed of the one generator all draws come from.
        chunk: images scored at a time (memory: chunk x N similarities).

    Returns:
        ``{"mean", "std", "repeats": [per-repeat precision], "candidates", "per_image"}``,
        ``per_image`` the (N,) fraction of repeats in which each image's text ranked first.
    """
    img, txt = _normalise(image_embeddings), _normalise(text_embeddings)
    n = len(img)
    if len(txt) != n:
        raise XmrError(f"R-precision: {n} images but {len(txt)} texts")
    groups = np.arange(n) if texts is None else _text_groups(texts, n)
    distinct = np.bincount(groups)
    fewest = int(n - distinct.max()) if n else 0
    if candidates < 2 or fewest < candidates - 1:
        raise XmrError(
            f"R-precision with {candidates} candidates needs {candidates - 1} mismatched texts "
            f"per image; this set offers {fewest} (use fewer candidates)"
        )
    rng = np.random.default_rng(seed)
    precisions = []
    per_image = np.zeros(n)
    for _ in range(repeats):
        others = _draw_mismatched(rng, groups, candidates - 1)
        hits = 0
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            sims = img[rows] @ txt.T
            own = sims[np.arange(sims.shape[0]), np.arange(rows.start, rows.stop)]
            rivals = np.take_along_axis(sims, others[rows], axis=1)
            hit = (own[:, None] > rivals).all(axis=1)
            per_image[rows] += hit
            hits += int(hit.sum())
        precisions.append(hits / n)
    return {
        "mean": float(np.mean(precisions)),
        "std": float(np.std(precisions)),
        "repeats": precisions,
        "candidates": candidates,
        "per_image": per_image / max(repeats, 1),
    }


def _text_groups(texts: Sequence[str], n: int) -> np.ndarray:
    if len(texts) != n:
        raise XmrError(f"R-precision: {n} images but {len(texts)} texts")
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(t, len(ids)) for t in texts], dtype=np.int64)


def _draw_mismatched(rng: np.random.Generator, groups: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of distinct texts whose group differs from row ``i``'s, drawn uniformly."""
    n = len(groups)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        pool = np.flatnonzero(groups != groups[i])
        out[i] = rng.choice(pool, size=k, replace=False)
    return out


def clip_score(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, *, scale: float = 100.0
) -> dict[str, float]:
    """Mean and std over pairs of ``scale * max(cos(image_i, text_i), 0)``."""
    img, txt = _normalise(image_embeddings), _normalise(text_embeddings)
    if img.shape != txt.shape:
        raise XmrError(f"CLIP score: {len(img)} images but {len(txt)} texts")
    per_pair = scale * np.clip((img.astype(np.float64) * txt).sum(axis=1), 0.0, None)
    return {"mean": float(per_pair.mean()), "std": float(per_pair.std())}
