"""Text-to-image generators: a diffusers pipeline named by ``diffusers:<hub id or dir>``.

The pipeline is loaded with ``diffusers.DiffusionPipeline.from_pretrained`` (the class named in
its ``model_index.json``: Stable Diffusion, SDXL, Kandinsky, PixArt, ... anything that takes
``prompt``, ``num_inference_steps``, ``guidance_scale``, ``height``/``width`` and ``generator``).
A hub id loads from the local Hugging Face cache when offline. The safety checker, where the
pipeline has one, is switched off: it blacks out images it flags, which would enter FID as
black squares (xmr says so in the run's report).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xmr.errors import XmrError

PREFIX = "diffusers:"


def parse_generator_spec(spec: str | os.PathLike) -> str:
    """The hub id or directory of ``diffusers:<target>`` (a bare directory is accepted)."""
    text = str(spec)
    if text.startswith(PREFIX):
        target = text[len(PREFIX) :]
    elif Path(text).is_dir():
        target = text
    else:
        raise XmrError(f"{spec}: expected diffusers:<hub id or directory>")
    if not target:
        raise XmrError(f"{spec}: empty diffusers model name")
    path = Path(target)
    if path.exists() or target.startswith((".", "/", "~")):
        if not path.is_dir():
            raise XmrError(f"{target}: not a directory (a diffusers pipeline is a directory)")
        if not (path / "model_index.json").is_file():
            raise XmrError(f"{target}: no model_index.json (not a saved diffusers pipeline)")
        return str(path.resolve())
    return target


def load_text2image_pipeline(
    spec: str | os.PathLike, device: str | None = None, dtype: str = "auto"
) -> tuple[Any, dict[str, Any]]:
    """Load a diffusers text-to-image pipeline.

    Args:
        spec: ``diffusers:<hub id or dir>`` or a pipeline directory.
        device: "cpu", "cuda", ...; default: cuda when available.
        dtype: "fp32", "fp16", "bf16" or "auto" (fp16 on CUDA, fp32 on CPU).

    Returns:
        ``(pipeline, info)`` with info = spec, class, device, dtype, safety checker removed.
    """
    import torch

    from xmr.models.base import resolve_device

    target = parse_generator_spec(spec)
    dev = resolve_device(device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype == "auto":
        dtype = "fp16" if dev.type == "cuda" else "fp32"
    if dtype not in dtypes:
        raise XmrError(f"unknown dtype {dtype!r} (choose from auto, {', '.join(dtypes)})")
    try:
        import diffusers
    except ImportError:
        raise XmrError("generation needs diffusers: pip install 'xmr[t2i]'") from None
    from diffusers.utils import deprecation_utils
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Newer diffusers renamed torch_dtype to dtype (and warns on the old name).
    dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its "expected types" notes are noise here
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(target, **{dtype_key: dtypes[dtype]})
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise XmrError(f"{spec}: cannot load the diffusers pipeline ({first})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
    removed = getattr(pipe, "safety_checker", None) is not None
    if removed:
        pipe.safety_checker = None
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    info = {
        "spec": f"{PREFIX}{target}",
        "class": type(pipe).__name__,
        "device": str(dev),
        "dtype": dtype,
        "safety_checker_removed": removed,
    }
    return pipe, info
