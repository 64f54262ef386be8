"""Generate a MUGE T2I submission with a diffusers pipeline (``xmr t2i generate``).

Resumable: finished images go to ``OUT.partial`` (one ``id<TAB>base64`` line each, flushed and
fsynced after every batch) beside ``OUT.partial.json`` (the settings); a killed run started again
with the same settings skips what is there, and with other settings is refused. When every text
has its image, ``OUT`` is written atomically in the texts' order and the partial files removed.

Deterministic per seed: image ``id`` starts from the noise of a generator seeded with
``sha256(f"{seed}:{id}")``, so it does not depend on its position, the batch size or where a run
was resumed (on one device and dtype; GPU kernels may differ in the last bits between runs).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xmr.data.readers._common import open_binary
from xmr.data.readers.muge_t2i import read_t2i_texts
from xmr.errors import XmrError
from xmr.io.atomic import atomic_write, atomic_write_json, check_output_file
from xmr.models.generators import load_text2image_pipeline

IMAGE_FORMATS = ("png", "jpeg")


def image_seed(seed: int, image_id: str) -> int:
    """The noise seed of one image: a 63-bit hash of the run seed and the image id."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def encode_image(image: Any, image_format: str = "png") -> str:
    """Standard base64 of the image encoded as PNG (lossless) or JPEG (quality 95)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_partial(path: Path, wanted: set[str]) -> dict[str, tuple[int, int]]:
    """``id -> (offset, length)`` of the finished lines of a partial file (images stay on
    disk: a full run's images are gigabytes); a torn last line (killed mid-write) is cut off."""
    done: dict[str, tuple[int, int]] = {}
    if not path.exists():
        return done
    keep = 0
    with open_binary(path) as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            iid, tab, payload = raw.rstrip(b"\n").decode("utf-8", "replace").partition("\t")
            if not tab or iid not in wanted or not payload:
                break
            done[iid] = (keep, len(raw))
            keep += len(raw)
    if keep != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return done


def _assemble(partial: Path, done: dict[str, tuple[int, int]], ids: list[str], tmp: Path) -> None:
    """Copy the partial file's lines into ``tmp`` in the texts' order, one line at a time."""
    with open(partial, "rb") as src, open(tmp, "wb") as dst:
        for iid in ids:
            offset, length = done[iid]
            src.seek(offset)
            dst.write(src.read(length))


def generate_t2i(
    model: str,
    texts: str | Path,
    out: str | Path,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    size: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    negative_prompt: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    image_format: str = "png",
    limit: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a submission ``out`` with one generated image per line of ``texts``.

    Args:
        model: ``diffusers:<hub id or dir>``.
        texts: a ``T2I_*.txt.tsv`` (``id<TAB>description``).
        out: the submission to write (``id<TAB>base64``).
        steps: denoising steps.
        guidance: classifier-free guidance scale.
        size: output height and width in pixels (default: the pipeline's).
        seed: run seed (see the module docstring).
        batch_size: prompts per pipeline call.
        negative_prompt: one negative prompt for every text.
        device: "cpu", "cuda", ... (default: cuda when available).
        dtype: "auto", "fp32", "fp16", "bf16".
        image_format: "png" or "jpeg".
        limit: only the first ``limit`` texts (a trial run; the output is then partial).
        overwrite: replace an existing ``out``.
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        A summary: counts (generated now, resumed), the settings and the pipeline's info.
    """
    import torch

    out = check_output_file(out)
    if out.exists() and not overwrite:
        raise XmrError(f"{out}: exists; set overwrite= to replace it")
    if steps < 1 or batch_size < 1 or (size is not None and (size < 8 or size % 8)):
        raise XmrError("steps and batch size must be positive, size a multiple of 8 (>= 8)")
    if image_format not in IMAGE_FORMATS:
        raise XmrError(f"unknown image format {image_format!r} ({', '.join(IMAGE_FORMATS)})")
    records = read_t2i_texts(texts)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise XmrError(f"{texts}: no texts")
    partial, settings_file = Path(f"{out}.partial"), Path(f"{out}.partial.json")
    settings = {
        "model": str(model),
        "texts": str(Path(texts).resolve()),
        "steps": steps,
        "guidance": guidance,
        "size": size,
        "seed": seed,
        "negative_prompt": negative_prompt,
        "dtype": dtype,
        "image_format": image_format,
    }
    if partial.exists() and settings_file.exists():
        before = json.loads(settings_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise XmrError(
                f"{partial}: a run with other settings ({', '.join(changed)}) left images there; "
                "use the same settings to resume it, or delete it"
            )
    if not settings_file.exists():
        partial.unlink(missing_ok=True)  # lines of unknown settings: not resumable
    done = _read_partial(partial, {r.id for r in records})
    resumed = len(done)
    atomic_write_json(settings_file, settings)
    todo = [r for r in records if r.id not in done]
    pipe, info = load_text2image_pipeline(model, device, dtype)
    dims = {"height": size, "width": size} if size else {}
    with open(partial, "ab") as fh:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            generators = [
                torch.Generator(device=pipe.device).manual_seed(image_seed(seed, r.id))
                for r in batch
            ]
            with torch.inference_mode():
                result = pipe(
                    prompt=[r.text for r in batch],
                    negative_prompt=[negative_prompt] * len(batch) if negative_prompt else None,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generators,
                    **dims,
                )
            for record, image in zip(batch, result.images, strict=True):
                line = f"{record.id}\t{encode_image(image, image_format)}\n".encode()
                done[record.id] = (fh.tell(), len(line))
                fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            if progress is not None:
                progress(len(done), len(records))
    ids = [r.id for r in records]
    atomic_write(out, lambda tmp: _assemble(partial, done, ids, tmp))
    partial.unlink(missing_ok=True)
    settings_file.unlink(missing_ok=True)
    return {
        "out": str(out),
        "texts": str(texts),
        "count": len(records),
        "generated": len(todo),
        "resumed": resumed,
        "settings": settings,
        "pipeline": info,
    }
