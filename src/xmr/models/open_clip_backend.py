"""The ``open_clip:`` backend (optional extra ``xmr[open_clip]``).

Spec targets:
    ``ARCH``                 built-in architecture, random weights
    ``ARCH@TAG``             a pretrained tag open_clip knows (downloads on first use)
    ``ARCH@/path/ckpt.pt``   a checkpoint file (state dict, or {"state_dict": ...})
    ``/path/dir``            a directory in open_clip's hub layout: open_clip_config.json
                             ({"model_cfg", "preprocess_cfg"}) + weights (*.safetensors/*.bin/*.pt)
    ``hf-hub:org/repo``      open_clip's own hub schema

open_clip is imported lazily. It imports torchvision at import time (for its own transforms, which
xmr never uses: the weights' preprocess_cfg is turned into xmr's ``ImagePreprocess``), so a machine
without a working torchvision cannot load this backend; xmr itself never needs torchvision.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from xmr.errors import XmrError
from xmr.io.failures import write_failures_named
from xmr.models.base import Encoder, resolve_device, resolve_precision
from xmr.models.preprocess import ImagePreprocess

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def import_open_clip() -> Any:
    try:
        import open_clip
    except Exception as exc:  # ImportError, or torchvision failing to load its compiled ops
        raise XmrError(
            "the open_clip backend needs the optional extra: pip install 'xmr[open_clip]' "
            f"(open_clip_torch and a torchvision matching your torch; import failed: {exc})"
        ) from None
    return open_clip


def preprocess_from_open_clip(cfg: Mapping[str, Any]) -> ImagePreprocess:
    """open_clip's preprocess_cfg (size, mean, std, interpolation, resize_mode) as the
    equivalent ImagePreprocess (torchvision Resize + CenterCrop on PIL images)."""
    size = cfg.get("size", 224)
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = cfg.get("resize_mode", "shortest")
    common = {
        "resample": str(cfg.get("interpolation", "bicubic")),
        "mean": tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "crop_rounding": "round",
    }
    if mode == "shortest":
        # open_clip resizes the short side to max(size) and centre-crops to size.
        return ImagePreprocess(mode="shortest_edge", size=max(hw), crop_size=hw, **common)
    if mode == "squash":
        return ImagePreprocess(mode="resize", size=hw, crop_size=None, **common)
    raise XmrError(f"open_clip resize_mode '{mode}' is not supported by xmr's preprocessing")


class OpenClipEncoder(Encoder):
    """An open_clip CLIP/SigLIP model with its tokenizer and preprocessing."""

    backend = "open_clip"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        model_cfg: Mapping[str, Any],
        *,
        spec: str,
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = dict(model_cfg)
        self.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        self.preprocess = preprocess_from_open_clip(self.preprocess_cfg)
        self.spec = spec
        self.embed_dim = int(self.model_cfg["embed_dim"])
        self.context_length = int(
            getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77)
        )
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model.to(self.device)
        self.model.eval()

    @classmethod
    def load(
        cls,
        target: str,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        cache_dir: str | None = None,
    ) -> OpenClipEncoder:
        open_clip = import_open_clip()
        from open_clip.factory import get_model_config

        weights: str | None = None
        if os.path.isdir(target):
            directory = Path(target).resolve()
            config_path = directory / CONFIG_NAME
            if not config_path.is_file():
                raise XmrError(
                    f"{directory}: no {CONFIG_NAME}; name the architecture of its checkpoint as "
                    "open_clip:<arch>@<checkpoint file>"
                )
            model_cfg = json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"]
            model_name = f"local-dir:{directory}"
            has_weights = any(
                p.suffix in (".safetensors", ".bin", ".pth") for p in directory.iterdir()
            )
            if not has_weights:
                candidates = sorted(directory.glob("*.pt"))
                weights = str(candidates[0]) if candidates else None
            spec = f"open_clip:{directory}"
        elif target.startswith("hf-hub:"):
            from open_clip.factory import _get_hf_config

            model_name, spec = target, f"open_clip:{target}"
            model_cfg = _get_hf_config(target[len("hf-hub:") :], cache_dir=cache_dir)["model_cfg"]
        else:
            model_name, _, pretrained = target.partition("@")
            model_cfg = get_model_config(model_name)
            if model_cfg is None:
                raise XmrError(
                    f"unknown open_clip architecture '{model_name}' "
                    f"(some known: {', '.join(open_clip.list_models()[:8])}, ...)"
                )
            if pretrained and os.path.exists(pretrained):
                pretrained = str(Path(pretrained).resolve())
            weights = pretrained or None
            spec = (
                f"open_clip:{model_name}@{pretrained}" if pretrained else f"open_clip:{model_name}"
            )
        try:
            if model_name.startswith("local-dir:") and weights is not None:
                model = open_clip.create_model(model_name, load_weights=False, cache_dir=cache_dir)
                open_clip.load_checkpoint(model, weights)
            elif model_name.startswith(("local-dir:", "hf-hub:")):
                model = open_clip.create_model(model_name, cache_dir=cache_dir)
            else:
                model = open_clip.create_model(model_name, pretrained=weights, cache_dir=cache_dir)
            tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise XmrError(f"cannot load open_clip model '{target}': {exc}") from None
        return cls(model, tokenizer, model_cfg, spec=spec, device=device, precision=precision)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        return {"input_ids": self.tokenizer(list(texts))}

    def text_features(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["input_ids"], normalize=False)

    def image_features(
        self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(pixel_values, Mapping):
            pixel_values = pixel_values["pixel_values"]
        return self.model.encode_image(pixel_values, normalize=False)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """open_clip's hub layout: open_clip_config.json + open_clip_model.safetensors, loadable
        as ``open_clip:<dir>`` (and by open_clip as ``local-dir:<dir>``)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with write_failures_named(out):
            save_file(state, str(out / WEIGHTS_NAME))
            config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}
            (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return out
