"""MUGE T2I evaluation jobs: real-set statistics, and FID / IS / R-precision / CLIP score of a
submission (``xmr t2i stats | evaluate``). Generation is in ``xmr.workflows.t2i_generate``.

``evaluate_t2i`` validates the submission against its texts, extracts Inception features of the
generated images (and of the real ones, or reads their cached statistics), and, with an xmr
image-text model, embeds images and texts for R-precision and CLIP score. Metric definitions:
``xmr.eval.generation``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.readers._common import BadRecords, iter_lines, require_path
from xmr.data.readers.muge import read_image_tsv
from xmr.data.readers.muge_t2i import read_t2i_texts
from xmr.errors import DataError, XmrError
from xmr.eval.generation import (
    clip_score,
    feature_statistics,
    fid_from_features,
    frechet_distance_to_features,
    inception_score,
    r_precision,
)
from xmr.eval.t2i_stats import (
    InceptionStats,
    check_stats_weights,
    is_stats_file,
    load_stats,
    save_stats,
)
from xmr.eval.t2i_submission import read_t2i_submission
from xmr.io.atomic import atomic_write_json, check_output_file

Progress = Callable[[str, int, int], None]


def _tsv_images(path: str | Path) -> tuple[list[str], list[Any]]:
    """Ids and lazy references of an ``id<TAB>base64`` TSV (``T2I_*.img.tsv``)."""
    path = Path(path)
    require_path(path)
    items: dict[str, Any] = {}
    read_image_tsv(path, BadRecords(False), items)
    if not items:
        raise XmrError(f"{path}: no images")
    return list(items), [it.image for it in items.values()]


def _features(net, refs, what: str, batch_size: int, workers: int, progress: Progress | None):
    from xmr.models.inception_features import extract_inception_features

    total = len(refs)
    report = (lambda done: progress(what, done, total)) if progress else None
    return extract_inception_features(
        net, refs, batch_size=batch_size, workers=workers, progress=report
    )


def compute_real_stats(
    images: str | Path,
    inception: str | Path,
    *,
    out: str | Path | None = None,
    batch_size: int = 50,
    workers: int = 0,
    device: str | None = None,
    progress: Progress | None = None,
) -> InceptionStats:
    """Inception statistics of an image TSV, written to ``out`` (``.npz``) when given."""
    from xmr.models.inception import load_fid_inception

    if out is not None:
        check_output_file(out)
    net = load_fid_inception(inception, device)
    _, refs = _tsv_images(images)
    pool, _ = _features(net, refs, "real", batch_size, workers, progress)
    mu, sigma = feature_statistics(pool)
    stats = InceptionStats(mu, sigma, len(pool), net.sha256, net.format, str(images))
    if out is not None:
        save_stats(stats, out)
    return stats


def read_categories(path: str | Path) -> dict[str, str]:
    """``id<TAB>category`` lines (a header line ``id<TAB>category`` is skipped)."""
    path = Path(path)
    require_path(path)
    out: dict[str, str] = {}
    for lineno, line in iter_lines(path, BadRecords(False)):
        if not line.strip():
            continue
        iid, tab, category = line.partition("\t")
        iid, category = iid.strip(), category.strip()
        if not tab or not iid or not category:
            raise DataError("expected 'id<TAB>category'", file=str(path), line=lineno)
        if lineno == 1 and (iid, category) == ("id", "category"):
            continue
        out[iid] = category
    return out


def evaluate_t2i(
    generated: str | Path,
    texts: str | Path,
    inception: str | Path,
    *,
    real: str | Path | None = None,
    model: str | None = None,
    categories: Mapping[str, str] | None = None,
    batch_size: int = 50,
    workers: int = 0,
    device: str | None = None,
    is_splits: int = 10,
    is_shuffle_seed: int | None = None,
    r_candidates: int = 100,
    r_repeats: int = 10,
    seed: int = 0,
    clip_scale: float = 100.0,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """FID, IS and (with ``model``) R-precision and CLIP score of a T2I submission.

    Args:
        generated: the submission TSV (checked first: an invalid one is an error).
        texts: the ``T2I_*.txt.tsv`` it answers.
        inception: the FID Inception weights (see ``xmr.models.inception``).
        real: real images (an ``id<TAB>base64`` TSV) or their statistics (``.npz``); None
            skips FID.
        model: an xmr image-text model spec (``hf:...``, ``open_clip:...``) for R-precision
            and CLIP score; None skips them.
        categories: id -> category, for a per-category breakdown.
        batch_size: images per Inception forward pass.
        workers: image decoding worker processes.
        device: where the networks run (default: cuda when available).
        is_splits: IS splits (10).
        is_shuffle_seed: permute before splitting (torch-fidelity: 2020); None: submission order.
        r_candidates: texts ranked per image for R-precision (100).
        r_repeats: R-precision repetitions (10).
        seed: seed of the R-precision draws.
        clip_scale: CLIP score scale (100).
        out: write the report there as JSON too.
        progress: called as ``progress(stage, done, total)``.

    Returns:
        The report: counts, the Inception file's sha256, ``fid``, ``is_mean``/``is_std``,
        ``r_precision``, ``clip_score`` and ``per_category``.
    """
    from xmr.models.inception import load_fid_inception

    if out is not None:
        check_output_file(out)
    ids, refs = read_t2i_submission(generated, texts)
    net = load_fid_inception(inception, device)
    cached = None
    if real is not None and is_stats_file(real):
        cached = load_stats(real)  # checked before any image is run through the network
        check_stats_weights(cached, net.sha256, real)
    pool, logits = _features(net, refs, "generated", batch_size, workers, progress)
    report: dict[str, Any] = {
        "generated": str(generated),
        "texts": str(texts),
        "count": len(ids),
        "inception": net.describe(),
        "fid": None,
    }
    real_pool, real_ids = None, None
    if real is not None:
        if cached is not None:
            stats = cached
        else:
            real_ids, real_refs = _tsv_images(real)
            real_pool, _ = _features(net, real_refs, "real", batch_size, workers, progress)
            mu, sigma = feature_statistics(real_pool)
            stats = InceptionStats(mu, sigma, len(real_pool), net.sha256, net.format, str(real))
        report["fid"] = frechet_distance_to_features(pool, stats.mu, stats.sigma)
        report["real"] = {
            "source": str(real),
            "count": stats.count,
            "weights_sha256": stats.weights_sha256,
        }
    report["is_mean"], report["is_std"] = inception_score(logits, is_splits, is_shuffle_seed)
    report["is_splits"] = is_splits
    hits = None
    if model is not None:
        hits = _retrieval_metrics(
            report, model, ids, refs, texts, device, r_candidates, r_repeats, seed, clip_scale
        )
    if categories:
        report["per_category"] = _per_category(
            categories, ids, pool, logits, real_ids, real_pool, hits, is_splits, is_shuffle_seed
        )
    if out is not None:
        atomic_write_json(out, report)
    return report


def _retrieval_metrics(report, model, ids, refs, texts, device, candidates, repeats, seed, scale):
    from xmr.models import create_encoder

    by_id = {t.id: t.text for t in read_t2i_texts(texts)}
    descriptions = [by_id[i] for i in ids]
    encoder = create_encoder(model, device=device)
    img_emb = encoder.encode_images(refs)
    txt_emb = encoder.encode_texts(descriptions)
    r = r_precision(
        img_emb, txt_emb, descriptions, candidates=candidates, repeats=repeats, seed=seed
    )
    report["r_precision"] = {k: v for k, v in r.items() if k != "per_image"}
    report["clip_score"] = clip_score(img_emb, txt_emb, scale=scale)
    report["model"] = encoder.spec
    per_pair = scale * np.clip((img_emb * txt_emb).sum(axis=1), 0.0, None)
    return r["per_image"], per_pair


def _per_category(categories, ids, pool, logits, real_ids, real_pool, hits, splits, shuffle):
    real_index = {iid: i for i, iid in enumerate(real_ids or [])}
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({categories[i] for i in ids if i in categories}):
        rows = np.array([k for k, i in enumerate(ids) if categories.get(i) == name])
        entry: dict[str, Any] = {"count": int(len(rows))}
        if real_pool is not None:
            real_rows = [
                real_index[i] for i, c in categories.items() if c == name and i in real_index
            ]
            if len(rows) >= 2 and len(real_rows) >= 2:
                entry["fid"] = fid_from_features(pool[rows], real_pool[real_rows])
                entry["real_count"] = len(real_rows)
        if len(rows) >= splits:
            entry["is_mean"], entry["is_std"] = inception_score(logits[rows], splits, shuffle)
        if hits is not None:
            entry["r_precision"] = float(hits[0][rows].mean())
            entry["clip_score"] = float(hits[1][rows].mean())
        out[name] = entry
    return out
