"""Cached Inception statistics of a real image set (``xmr t2i stats --out stats.npz``).

The file is a NumPy ``.npz`` with ``mu`` (2048,) and ``sigma`` (2048, 2048) in float64, as
pytorch-fid's and clean-fid's statistics files are, plus ``meta``: a JSON string with the image
count, the Inception weights' sha256 and format, the feature layer and the source. xmr refuses
statistics made with other Inception weights. A plain ``mu``/``sigma`` file from another tool
(no ``meta``) is accepted and reported as of unknown weights.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write

STATS_VERSION = 1


@dataclass
class InceptionStats:
    """Mean and covariance of a set's 2048-d Inception pool features."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    weights_sha256: str | None
    weights_format: str | None = None
    source: str | None = None
    feature: str = "pool_2048"

    def meta(self) -> dict[str, Any]:
        return {
            "version": STATS_VERSION,
            "count": self.count,
            "weights_sha256": self.weights_sha256,
            "weights_format": self.weights_format,
            "feature": self.feature,
            "source": self.source,
            "resize": "tensorflow1x_bilinear_299",
        }


def save_stats(stats: InceptionStats, path: str | Path) -> Path:
    """Write ``stats`` atomically as ``.npz`` (the name is kept as given)."""
    path = Path(path)
    meta = np.array(json.dumps(stats.meta()))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=stats.mu, sigma=stats.sigma, meta=meta)

    atomic_write(path, write)
    return path


def is_stats_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``.npz`` (a zip of ``.npy`` arrays) rather than an image TSV."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(".npy") for name in archive.namelist())


def load_stats(path: str | Path) -> InceptionStats:
    """Read statistics written by ``save_stats`` (or any npz with ``mu`` and ``sigma``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise XmrError(f"{path}: a statistics file needs arrays 'mu' and 'sigma'")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise XmrError(f"{path}: not a statistics .npz ({exc})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise XmrError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return InceptionStats(
        mu,
        sigma,
        meta.get("count"),
        meta.get("weights_sha256"),
        meta.get("weights_format"),
        meta.get("source"),
        meta.get("feature", "pool_2048"),
    )


def check_stats_weights(stats: InceptionStats, sha256: str, where: str | Path) -> None:
    """Refuse statistics computed with other Inception weights than ``sha256``'s."""
    if stats.weights_sha256 is not None and stats.weights_sha256 != sha256:
        raise XmrError(
            f"{where}: statistics made with Inception weights {stats.weights_sha256[:12]}..., "
            f"not the given ones ({sha256[:12]}...); recompute them with `xmr t2i stats`"
        )
