"""MUGE T2I files for tests: descriptions, base64 image TSVs, submissions (seed 004 layout)."""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "红色": (200, 30, 30),
    "蓝色": (30, 30, 200),
    "绿色": (30, 160, 40),
    "黑色": (20, 20, 20),
}
GARMENTS = ["连衣裙", "短裤", "衬衫", "外套", "帆布鞋"]


def make_image(seed: int, size: int = 48, colour=(128, 128, 128), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float64)[None, None, :]
    pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes, urlsafe: bool = False) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode("ascii")


def write_t2i_split(
    folder: Path, split: str, n: int, *, images: bool = True, seed: int = 0, urlsafe: bool = False
) -> list[tuple[str, str]]:
    """Write T2I_{split}.txt.tsv (and .img.tsv); returns [(id, text)]."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    rows, img_lines = [], []
    for i in range(n):
        colour = colours[i % len(colours)]
        iid = f"{split}{i:04d}{'ab' * 8}"
        text = f"{colour}{GARMENTS[i % len(GARMENTS)]}2021夏季新款{i}"
        rows.append((iid, text))
        if images:
            data = make_image(seed * 1000 + i, colour=COLOURS[colour])
            img_lines.append(f"{iid}\t{b64(data, urlsafe)}\n")
    (folder / f"T2I_{split}.txt.tsv").write_text(
        "".join(f"{i}\t{t}\n" for i, t in rows), encoding="utf-8"
    )
    if images:
        (folder / f"T2I_{split}.img.tsv").write_text("".join(img_lines), encoding="utf-8")
    return rows


def write_submission(path: Path, rows: list[tuple[str, str]], *, seed: int = 50, shift=0) -> Path:
    """A valid submission: an image per id, colour from the text, optionally brightened."""
    lines = []
    for k, (iid, text) in enumerate(rows):
        colour = next(c for name, c in COLOURS.items() if text.startswith(name))
        colour = tuple(min(255, c + shift) for c in colour)
        lines.append(f"{iid}\t{b64(make_image(seed + k, colour=colour))}\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def isolate_torch_fidelity() -> bool:
    """Make ``torch_fidelity.<module>`` importable without its package ``__init__`` (which
    imports torchvision, absent here): its feature extractor and TF resize need torch only.
    torchmetrics imports those modules too when torch-fidelity is installed. False when
    torch-fidelity is not installed (``make test`` installs it with ``--no-deps``)."""
    if hasattr(sys.modules.get("torch_fidelity"), "_xmr_isolated"):
        return True
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        return False
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    package.__version__ = "isolated"
    package._xmr_isolated = True
    sys.modules["torch_fidelity"] = package
    return True
