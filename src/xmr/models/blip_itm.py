"""BLIP and BLIP-2 image-text matching (ITM) heads from transformers, as xmr cross-encoders.

Both load with ``from_pretrained`` from a hub id or a local ``save_pretrained`` directory (model
and processor side by side: config.json, model.safetensors, tokenizer files,
processor_config.json), so the checkpoint's own image size, mean/std and tokenizer travel with it.

Scoring runs the vision tower once per *distinct* image of a batch and the text side once per
pair, which is what makes image->text reranking (one image, K texts) cheap. The computation is
the one of ``BlipForImageTextRetrieval(use_itm_head=True)`` and
``Blip2ForImageTextRetrieval(use_image_text_matching_head=True)``; tests check that equality.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.errors import XmrError
from xmr.models.cross_encoders import CrossEncoder, check_pairs, register_cross_encoder

if TYPE_CHECKING:
    from PIL import Image as PILImage

# LAVIS truncates ITM texts at 35 tokens for BLIP and 32 for BLIP-2; we allow a little more
# (e-commerce titles are long) but never more than the position table.
DEFAULT_MAX_TEXT_TOKENS = 64


@contextlib.contextmanager
def quiet_transformers():
    """No progress bars, and no warning that the PIL image processor stands in for torchvision's
    (the two give the same pixels for BLIP's resize + normalise)."""
    from transformers.utils import logging as hf_logging

    from xmr.models.hf_clip import quiet_transformers as no_progress_bars

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with no_progress_bars():
            yield
    finally:
        hf_logging.set_verbosity(level)


def _hub_error(source: str, exc: Exception) -> XmrError:
    where = "directory" if Path(source).exists() else "hub id"
    return XmrError(
        f"cannot load cross-encoder {where} '{source}': {str(exc).strip().rstrip('.')}. "
        "Hub downloads need network access "
        "or a filled HF cache; a local directory needs config.json, the weights, the tokenizer "
        "files and processor_config.json (save_pretrained writes all of them)."
    )


class _HFItmCrossEncoder(CrossEncoder):
    """Shared loading, batching and pre-processing for the transformers ITM models."""

    model_class_name = ""

    def __init__(
        self,
        source: str,
        *,
        device: str | None = None,
        precision: str = "fp32",
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        import torch
        import transformers

        from xmr.models.base import resolve_device, resolve_precision
        from xmr.models.hf_clip import _transformers_version

        self.source = source
        self.spec = source
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        # Weights stay fp32; fp16/bf16 run under autocast (as the bi-encoders do).
        self.precision = resolve_precision(precision, self.torch_device)
        dtype_kw = "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"
        try:
            with quiet_transformers():
                if model is None:
                    cls = getattr(transformers, self.model_class_name)
                    model = cls.from_pretrained(source, **{dtype_kw: torch.float32})
                if processor is None:
                    processor = transformers.AutoProcessor.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise _hub_error(source, exc) from None
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        limit = min(self._max_positions(), max_text_tokens)
        model_max = getattr(self.tokenizer, "model_max_length", None) or limit
        self.max_text_tokens = int(min(limit, model_max))

    # -- subclass hooks --------------------------------------------------------------------
    def _max_positions(self) -> int:
        raise NotImplementedError

    def _itm_logits(self, image_embeds, input_ids, attention_mask):
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write model + processor with ``save_pretrained`` (loadable by ``create_cross_encoder``)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(out)
            self.processor.save_pretrained(out)
        return out

    def _autocast(self):
        import torch

        from xmr.models.base import PRECISIONS

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=PRECISIONS[self.precision])

    def pixel_values(self, images: Sequence[PILImage.Image]):
        out = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")
        return out["pixel_values"].to(self.device)

    def encode_images(self, pixel_values):
        """Vision-tower hidden states (batch, patches + 1, width)."""
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def tokenize(self, texts: Sequence[str]):
        # The tokenizer, not the processor: a BLIP-2 processor with num_query_tokens would prepend
        # image placeholder tokens that the model strips again.
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def forward_logits(self, images: Sequence[PILImage.Image], texts: Sequence[str]):
        """Differentiable ITM logits (torch, shape (n, 2)) for one batch of aligned pairs.

        Distinct images (by object identity) go through the vision tower once.
        """
        import torch

        slot: dict[int, int] = {}
        unique: list[PILImage.Image] = []
        index = []
        for im in images:
            key = id(im)
            if key not in slot:
                slot[key] = len(unique)
                unique.append(im)
            index.append(slot[key])
        image_embeds = self.encode_images(self.pixel_values(unique))
        image_embeds = image_embeds[torch.tensor(index, device=image_embeds.device)]
        input_ids, attention_mask = self.tokenize(texts)
        return self._itm_logits(image_embeds, input_ids, attention_mask)

    def logits(
        self, images: Sequence[PILImage.Image], texts: Sequence[str], batch_size: int = 32
    ) -> np.ndarray:
        import torch

        check_pairs(images, texts)
        if batch_size < 1:
            raise XmrError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), 2), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(texts), batch_size):
                stop = start + batch_size
                logits = self.forward_logits(images[start:stop], texts[start:stop])
                out[start:stop] = logits.float().cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model_class": self.model_class_name,
            "precision": self.precision,
            "max_text_tokens": self.max_text_tokens,
        }


class BlipItmCrossEncoder(_HFItmCrossEncoder):
    """BLIP ITM (``BlipForImageTextRetrieval``): ITM head on the [CLS] of the image-grounded text
    encoder. Published checkpoints: Salesforce/blip-itm-{base,large}-{coco,flickr}."""

    model_class_name = "BlipForImageTextRetrieval"

    def _max_positions(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def _itm_logits(self, image_embeds, input_ids, attention_mask):
        import torch

        # transformers builds this mask on the CPU; we build it where the embeddings are.
        image_atts = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        hidden = self.model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        ).last_hidden_state
        return self.model.itm_head(hidden[:, 0, :])


class Blip2ItmCrossEncoder(_HFItmCrossEncoder):
    """BLIP-2 ITM (``Blip2ForImageTextRetrieval``): the Q-Former reads query tokens + text over the
    image; the ITM head's logits are averaged over the query positions (as in LAVIS).
    Published checkpoint: Salesforce/blip2-itm-vit-g."""

    model_class_name = "Blip2ForImageTextRetrieval"

    def _max_positions(self) -> int:
        return int(self.model.config.qformer_config.max_position_embeddings)

    def _itm_logits(self, image_embeds, input_ids, attention_mask):
        import torch

        m = self.model
        n = image_embeds.shape[0]
        image_atts = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        query_tokens = m.query_tokens.expand(n, -1, -1)
        n_query = query_tokens.shape[1]
        query_atts = torch.ones((n, n_query), dtype=torch.long, device=attention_mask.device)
        embeds = m.embeddings(input_ids=input_ids, query_embeds=query_tokens)
        hidden = m.qformer(
            query_embeds=embeds,
            query_length=n_query,
            attention_mask=torch.cat([query_atts, attention_mask], dim=1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=True,
        ).last_hidden_state
        hidden = hidden.to(dtype=m.itm_head.weight.dtype)
        return m.itm_head(hidden[:, :n_query, :]).mean(dim=1)


@register_cross_encoder("blip")
def _create_blip(source: str, **kwargs: Any) -> CrossEncoder:
    return BlipItmCrossEncoder(source, **kwargs)


@register_cross_encoder("blip2")
def _create_blip2(source: str, **kwargs: Any) -> CrossEncoder:
    return Blip2ItmCrossEncoder(source, **kwargs)


# --------------------------------------------------------------------------------------------
# Tiny random models in the real on-disk format, for tests and the offline demo.
# --------------------------------------------------------------------------------------------

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
_PUNCT = list(".,!?'-:;()/&+")


def tiny_vocab(words: Sequence[str] = ()) -> dict[str, int]:
    """A WordPiece vocabulary that spells any lowercase ASCII text (characters and ##characters)
    plus whole ``words``: enough for a BertTokenizer without downloading one."""
    tokens = _SPECIALS + _CHARS + [f"##{c}" for c in _CHARS] + _PUNCT
    for w in words:
        w = w.lower()
        if w not in tokens:
            tokens.append(w)
    return {t: i for i, t in enumerate(tokens)}


def _tiny_processor(kind: str, image_size: int, words: Sequence[str]):
    import transformers
    from transformers import BertTokenizer, Blip2Processor, BlipProcessor

    # transformers 5 has a torchvision image processor and a PIL one (same pixels for BLIP);
    # use the PIL one when torchvision is absent, as transformers itself would (minus the warning).
    try:
        import torchvision  # noqa: F401

        image_processor_class = transformers.BlipImageProcessor
    except ImportError:
        # (no getattr default: touching BlipImageProcessor is what prints the fallback warning)
        if hasattr(transformers, "BlipImageProcessorPil"):
            image_processor_class = transformers.BlipImageProcessorPil
        else:
            image_processor_class = transformers.BlipImageProcessor

    tokenizer = BertTokenizer(vocab=tiny_vocab(words))
    image_processor = image_processor_class(size={"height": image_size, "width": image_size})
    cls = BlipProcessor if kind == "blip" else Blip2Processor
    return cls(image_processor=image_processor, tokenizer=tokenizer)


def create_tiny_cross_encoder(
    path: str | Path,
    kind: str = "blip",
    *,
    hidden: int = 32,
    layers: int = 1,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 0,
    words: Sequence[str] = (),
    embed_dim: int = 16,
    num_query_tokens: int = 4,
    text_init_range: float = 0.02,
) -> Path:
    """Save a tiny random BLIP (``kind="blip"``) or BLIP-2 (``"blip2"``) retrieval model (ITM and
    ITC heads) with its processor to ``path`` (save_pretrained format); load it with
    ``create_cross_encoder(path)`` (ITM) or ``create_encoder("hf:path")`` (ITC bi-encoder).
    ``embed_dim`` is the ITC space, ``num_query_tokens`` BLIP-2's K; ``text_init_range`` the
    std of the text encoder's / Q-Former's random weights (BERT's 0.02 makes a one-layer random
    text tower's CLS nearly the same for every text)."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        BlipConfig,
        BlipForImageTextRetrieval,
    )

    if kind not in ("blip", "blip2"):
        raise XmrError(f"unknown tiny cross-encoder kind '{kind}' (blip or blip2)")
    processor = _tiny_processor(kind, image_size, words)
    vocab_size = len(processor.tokenizer.get_vocab())
    vision = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        image_size=image_size,
        patch_size=patch_size,
        initializer_range=0.02,  # BLIP's vision default (1e-10) leaves a random model blind
    )
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        encoder_hidden_size=hidden,
        pad_token_id=0,
        initializer_range=text_init_range,
    )
    torch.manual_seed(seed)
    if kind == "blip":
        text.update(bos_token_id=2, sep_token_id=3)
        config = BlipConfig(
            text_config=text,
            vision_config=vision,
            projection_dim=embed_dim,
            image_text_hidden_size=embed_dim,
        )
        model = BlipForImageTextRetrieval(config)
    else:
        text.update(use_qformer_text_input=True, cross_attention_frequency=1)
        config = Blip2Config(
            vision_config=vision,
            qformer_config=text,
            num_query_tokens=num_query_tokens,
            image_text_hidden_size=embed_dim,
        )
        model = Blip2ForImageTextRetrieval(config)
        with torch.no_grad():
            # transformers starts the query tokens at zero: all K would be the same vector, and
            # max-sim over K (or a per-vector fusion) could not be told from one vector. Trained
            # BLIP-2 query tokens differ; so do these (the Q-Former's layer norm sets the scale).
            model.query_tokens.normal_(0.0, 1.0)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.eval().save_pretrained(out)
        processor.save_pretrained(out)
    return out
