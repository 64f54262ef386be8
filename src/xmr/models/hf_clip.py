"""The ``hf:`` backend: transformers CLIPModel, ChineseCLIPModel, SiglipModel and Siglip2Model.

Loading goes through transformers' own ``from_pretrained`` (hub ids and local directories alike);
the family is read from ``config.model_type``. The image preprocessing comes from the saved
``preprocessor_config.json`` (or ``processor_config.json``) and runs in xmr's torchvision-free
``ImagePreprocess``; the tokenizer is the saved one.

SigLIP models are fed texts padded to the full context length and *without* an attention mask:
that is how they were trained (big_vision pools the last position, which is padding), and it is
what transformers 4.x's SiglipTokenizer produced.
"""

from __future__ import annotations

import contextlib
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
from xmr.models.registry import HF_MODEL_TYPES, looks_local

IMAGE_PROCESSOR_TYPES = {
    "clip": "CLIPImageProcessor",
    "chinese_clip": "ChineseCLIPImageProcessor",
    "siglip": "SiglipImageProcessor",
    "siglip2": "Siglip2ImageProcessor",
    "blip": "BlipImageProcessor",
    "blip-2": "BlipImageProcessor",
}
# Token tensors each family's get_text_features takes.
TEXT_INPUTS = {
    "clip": ("input_ids", "attention_mask"),
    "chinese_clip": ("input_ids", "attention_mask", "token_type_ids"),
    "siglip": ("input_ids",),
    "siglip2": ("input_ids",),
    "blip": ("input_ids", "attention_mask"),
    "blip-2": ("input_ids", "attention_mask"),
}
# The model types HFEncoder itself loads (BLIP and BLIP-2 are ``blip_encoders.BlipEncoder``).
CLIP_MODEL_TYPES = ("clip", "chinese_clip", "siglip", "siglip2")


def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-file progress bars (loading/writing shards) while we call it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _features(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4.x) or a ModelOutput whose pooler_output
    holds the projected features (5.x)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise XmrError(f"unexpected output from the model: {type(output).__name__}")
    return pooled


def load_image_processor_config(source: str, **hub_kwargs: Any) -> dict[str, Any] | None:
    """The saved image processor dict (hub id or local dir), or None when there is none."""
    if os.path.isdir(source):
        for name, key in (
            ("preprocessor_config.json", None),
            ("processor_config.json", "image_processor"),
        ):
            path = Path(source) / name
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                data = data.get(key) if key else data
                if data:
                    return data
        return None
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        return ImageProcessingMixin.get_image_processor_dict(source, **hub_kwargs)[0]
    except OSError:
        return None


def load_tokenizer(source: str, **hub_kwargs: Any) -> Any:
    """AutoTokenizer, except that a local tokenizer saved as the generic PreTrainedTokenizerFast
    (tokenizer.json only, as xmr's tiny models are) loads as exactly that: transformers 5 would
    otherwise force its own class for some model types (siglip2 -> a Gemma tokenizer)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_path = Path(source) / "tokenizer_config.json"
    if config_path.is_file() and (Path(source) / "tokenizer.json").is_file():
        saved_class = json.loads(config_path.read_text(encoding="utf-8")).get("tokenizer_class")
        if saved_class == "PreTrainedTokenizerFast":
            return PreTrainedTokenizerFast.from_pretrained(source, **hub_kwargs)
    return AutoTokenizer.from_pretrained(source, **hub_kwargs)


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """save_pretrained, naming a generic tokenizer.json tokenizer "PreTrainedTokenizerFast" (the
    class transformers 4.x and 5.x both load it as; 5.x writes its internal "TokenizersBackend")."""
    tokenizer.save_pretrained(out)
    if type(tokenizer).__name__ not in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# model_type -> the HFEncoder subclass that loads it (``register_hf_family``); the others load
# as HFEncoder itself.
HF_ENCODER_CLASSES: dict[str, type[HFEncoder]] = {}


def register_hf_family(*model_types: str):
    """Class decorator: ``HFEncoder.load`` builds models of ``model_types`` with this class."""

    def decorate(klass: type[HFEncoder]) -> type[HFEncoder]:
        for model_type in model_types:
            HF_ENCODER_CLASSES[model_type] = klass
        return klass

    return decorate


class HFEncoder(Encoder):
    """A transformers CLIP-family model with its tokenizer and image preprocessing."""

    backend = "hf"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        preprocess: ImagePreprocess,
        *,
        spec: str,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        context_length: int | None = None,
        processor_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.spec = spec
        self.model_type = model.config.model_type
        self.processor_config = dict(processor_config or {})
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        text_cfg = self._text_config()
        if context_length is None:
            context_length = int(text_cfg.max_position_embeddings)
            tok_max = getattr(tokenizer, "model_max_length", None)
            if isinstance(tok_max, int) and 0 < tok_max < context_length:
                context_length = tok_max
        self.context_length = int(context_length)
        self.embed_dim = self._embed_dim()
        self.model.to(self.device)
        self.model.eval()

    def _text_config(self) -> Any:
        """The config of the text tower (its ``max_position_embeddings`` bounds the context)."""
        return self.model.config.text_config

    def _embed_dim(self) -> int:
        cfg = self.model.config
        if self.model_type in ("siglip", "siglip2"):
            return int(
                getattr(cfg.text_config, "projection_size", None) or cfg.vision_config.hidden_size
            )
        return int(cfg.projection_dim)

    @classmethod
    def load(
        cls,
        target: str,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        context_length: int | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
    ) -> HFEncoder:
        """Load ``target`` (hub id or local directory) with transformers' from_pretrained."""
        from transformers import AutoConfig

        is_local = os.path.isdir(target)
        hub_kwargs: dict[str, Any] = {}
        if revision is not None:
            hub_kwargs["revision"] = revision
        if local_files_only is not None:
            hub_kwargs["local_files_only"] = local_files_only
        where = f"local directory {target}" if is_local else f"'{target}' (hub id)"
        if not is_local and (os.path.exists(target) or looks_local(target)):
            # A path, never a hub id: say so instead of transformers' repo-id complaint.
            what = "is not a directory" if os.path.exists(target) else "no such directory"
            raise XmrError(f"model {target}: {what}")
        try:
            config = AutoConfig.from_pretrained(target, **hub_kwargs)
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())  # transformers' messages span several lines
            raise XmrError(f"cannot load model config from {where}: {reason}") from None
        model_type = getattr(config, "model_type", None)
        if model_type not in HF_MODEL_TYPES:
            raise XmrError(
                f"{where}: model_type '{model_type}' is not a CLIP-family model "
                f"(supported: {', '.join(HF_MODEL_TYPES)})"
            )
        if model_type in HF_ENCODER_CLASSES and not issubclass(cls, HF_ENCODER_CLASSES[model_type]):
            cls = HF_ENCODER_CLASSES[model_type]  # noqa: PLW0642 - the family's own encoder
        model_class = cls._model_class(config, where)
        dtype_kw = "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"
        try:
            with quiet_transformers():
                model = model_class.from_pretrained(
                    target, config=config, **{dtype_kw: torch.float32}, **hub_kwargs
                )
            tokenizer = load_tokenizer(target, **hub_kwargs)
        except (OSError, ValueError) as exc:
            raise XmrError(f"cannot load model from {where}: {exc}") from None
        processor_config = load_image_processor_config(target, **hub_kwargs)
        if processor_config is None:
            raise XmrError(
                f"{where}: no preprocessor_config.json (the image preprocessing is unknown)"
            )
        preprocess = ImagePreprocess.from_hf_config(processor_config, model_type)
        spec = f"hf:{Path(target).resolve()}" if is_local else f"hf:{target}"
        return cls(
            model,
            tokenizer,
            preprocess,
            spec=spec,
            device=device,
            precision=precision,
            context_length=context_length,
            processor_config=processor_config,
        )

    @classmethod
    def _model_class(cls, config: Any, where: str) -> Any:
        """The transformers class to load ``config`` with (subclasses pick their own)."""
        from transformers import AutoModel

        return AutoModel

    # ---- training-facing API ------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        padding = "max_length" if self.model_type in ("siglip", "siglip2") else "longest"
        encoded = self.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return {k: encoded[k] for k in TEXT_INPUTS[self.model_type] if k in encoded}

    def text_features(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.model.get_text_features(**tokens))

    def image_features(
        self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(pixel_values, Mapping):
            return _features(self.model.get_image_features(**pixel_values))
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write weights (safetensors), config, tokenizer and preprocessor_config.json in
        transformers' layout: ``hf:out_dir`` and ``AutoModel.from_pretrained(out_dir)`` load it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        kwargs = {} if _transformers_version() >= (5, 0) else {"safe_serialization": True}
        with write_failures_named(out):  # a full disk: one line naming the directory
            with quiet_transformers():
                self.model.save_pretrained(out, **kwargs)
            save_tokenizer(self.tokenizer, out)
            processor = {**self.processor_config}
            processor.update(self.preprocess.to_hf_config(IMAGE_PROCESSOR_TYPES[self.model_type]))
            (out / "preprocessor_config.json").write_text(
                json.dumps(processor, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        return out
