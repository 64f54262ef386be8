"""BLIP and BLIP-2 as bi-encoders (their image-text contrastive, ITC, heads) under ``hf:``.

* BLIP (``BlipForImageTextRetrieval``): an image is ``normalize(vision_proj(ViT CLS))``, a text
  ``normalize(text_proj(CLS))`` of the unimodal text encoder; one vector each. This is
  transformers' ``BlipForImageTextRetrieval(use_itm_head=False)`` score.
* BLIP-2 (``Blip2ForImageTextRetrieval``; the ``Blip2{Vision,Text}ModelWithProjection``
  checkpoints hold the same weights): an image is the K = ``num_query_tokens`` (32 in the
  published models) Q-Former query outputs over the ViT's hidden states, each projected with
  ``vision_projection`` and normalised, (K, D); a text the normalised ``text_projection`` of the
  Q-Former's text-only CLS. The score is ``max_k <t, v_k>``, as LAVIS and transformers'
  ``Blip2ForImageTextRetrieval(use_image_text_matching_head=False)`` compute it
  (``image_vectors = K``; see ``xmr.vectors.max_sim``).

Fused items (seed 001's "text -> image+caption"): :meth:`Blip2Encoder.encode_items` runs the
Q-Former in LAVIS's multimodal mode (``extract_features(mode="multimodal")``: the caption's tokens
beside the query tokens, both attending to each other, the queries also to the image) and keeps
the K query positions (LAVIS's ``multimodal_embeds``, unprojected there). xmr projects them with
the ITC image projection (``vision_projection``) and normalises each, so a fused item is
(K, D) in the same space as the texts and is scored by the same max-sim as an image: the seed
swaps the image for image+caption in the ITC, nothing else.

Temperature: transformers' retrieval classes have none (LAVIS trains ``temp``, initialised at
0.07). xmr adds ``logit_scale = log(1 / 0.07)`` as a parameter of the model for training and
saves it as ``xmr_logit_scale`` in ``config.json`` (the weights file stays transformers' own).

Text length: the whole position table by default (512 for the published models; LAVIS truncates
at 35 tokens for BLIP and 32 for BLIP-2: pass ``context_length=32`` for its exact inputs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.errors import XmrError
from xmr.models.base import _collate_crops, check_texts, load_image
from xmr.models.hf_clip import HFEncoder, register_hf_family

# LAVIS's initial temperature for both BLIP and BLIP-2 ITC.
INIT_TEMPERATURE = 0.07
LOGIT_SCALE_KEY = "xmr_logit_scale"

# Checkpoint architectures that carry the ITC projections; others (BLIP captioning, BLIP-2 with
# an OPT/T5 language model) would load with random heads.
ITC_ARCHITECTURES = {
    "blip": {"BlipForImageTextRetrieval"},
    "blip-2": {
        "Blip2ForImageTextRetrieval",
        "Blip2TextModelWithProjection",
        "Blip2VisionModelWithProjection",
    },
}


class _BlipFamily(HFEncoder):
    """Shared loading and saving: the retrieval class, the added temperature."""

    retrieval_class = ""

    def __init__(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        init = getattr(model.config, LOGIT_SCALE_KEY, None)
        init = math.log(1 / INIT_TEMPERATURE) if init is None else float(init)
        if not isinstance(getattr(model, "logit_scale", None), torch.nn.Parameter):
            model.logit_scale = torch.nn.Parameter(torch.tensor(init, dtype=torch.float32))
        super().__init__(model, *args, **kwargs)

    @classmethod
    def _model_class(cls, config: Any, where: str) -> Any:
        import transformers

        archs = set(getattr(config, "architectures", None) or ())
        allowed = ITC_ARCHITECTURES[config.model_type]
        if archs and not archs & allowed:
            raise XmrError(
                f"{where}: a {', '.join(sorted(archs))} checkpoint has no image-text contrastive "
                f"heads; xmr's {config.model_type} bi-encoder needs one of "
                f"{', '.join(sorted(allowed))} (e.g. Salesforce/blip-itm-base-coco, "
                "Salesforce/blip2-itm-vit-g)"
            )
        return getattr(transformers, cls.retrieval_class)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """transformers' layout (loads with ``hf:out_dir`` and ``from_pretrained``); the learned
        temperature goes into config.json, not into the weights."""
        scale = self.model._parameters.pop("logit_scale")
        self.model.config.__dict__[LOGIT_SCALE_KEY] = float(scale.detach())
        try:
            return super().save(out_dir)
        finally:
            self.model.logit_scale = scale

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        # The tokenizer itself (not a BLIP-2 processor, which would prepend image tokens).
        encoded = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _vision_states(self, pixel_values: Any) -> torch.Tensor:
        if isinstance(pixel_values, Mapping):
            pixel_values = pixel_values["pixel_values"]
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state


@register_hf_family("blip")
class BlipEncoder(_BlipFamily):
    """BLIP ITC: ``vision_proj`` of the image CLS and ``text_proj`` of the text CLS (one vector)."""

    retrieval_class = "BlipForImageTextRetrieval"
    image_vectors = 1  # (also Encoder's default once multi-vector encoders are in the base)

    def _embed_dim(self) -> int:
        return int(self.model.config.image_text_hidden_size)

    def image_features(self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]):
        return self.model.vision_proj(self._vision_states(pixel_values)[:, 0, :])

    def text_features(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model.text_encoder(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state
        return self.model.text_proj(hidden[:, 0, :])


@register_hf_family("blip-2")
class Blip2Encoder(_BlipFamily):
    """BLIP-2 ITC: K query embeddings per image, one text embedding, max-sim (module docstring)."""

    retrieval_class = "Blip2ForImageTextRetrieval"

    # Training: the ViT stays frozen unless asked (BLIP-2 and seed 001 train the Q-Former only).
    frozen_by_default = ("image",)

    def __init__(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.image_vectors = int(model.config.num_query_tokens)

    @staticmethod
    def parameter_tower(name: str) -> str:
        """Training's tower of a parameter: "image" for the ViT, "other" for the temperature,
        "text" for the Q-Former with its query tokens and both projections (the image side's
        ``vision_projection`` is Q-Former, not ViT)."""
        if name == "logit_scale":
            return "other"
        return "image" if name.startswith("vision_model.") else "text"

    def _text_config(self) -> Any:
        return self.model.config.qformer_config

    def _embed_dim(self) -> int:
        return int(self.model.config.image_text_hidden_size)

    def _queries(self, image_states: torch.Tensor, tokens: Mapping[str, torch.Tensor] | None):
        """The Q-Former's K query outputs over ``image_states``: image-only, or with the
        caption ``tokens`` beside the queries (multimodal mode)."""
        m = self.model
        n = image_states.shape[0]
        image_atts = torch.ones(
            image_states.shape[:-1], dtype=torch.long, device=image_states.device
        )
        queries = m.query_tokens.expand(n, -1, -1)
        k = queries.shape[1]
        if tokens is None:
            hidden = m.qformer(
                query_embeds=queries,
                encoder_hidden_states=image_states,
                encoder_attention_mask=image_atts,
            ).last_hidden_state
        else:
            mask = tokens["attention_mask"]
            query_atts = torch.ones((n, k), dtype=mask.dtype, device=mask.device)
            hidden = m.qformer(
                query_embeds=m.embeddings(input_ids=tokens["input_ids"], query_embeds=queries),
                query_length=k,
                attention_mask=torch.cat([query_atts, mask], dim=1),
                encoder_hidden_states=image_states,
                encoder_attention_mask=image_atts,
            ).last_hidden_state
        hidden = hidden[:, :k, :].to(dtype=m.vision_projection.weight.dtype)
        return m.vision_projection(hidden)

    def image_features(self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]):
        """Unnormalised (B, K, embed_dim): every query token's projection."""
        return self._queries(self._vision_states(pixel_values), None)

    def text_features(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        m = self.model
        hidden = m.qformer(
            query_embeds=m.embeddings(input_ids=tokens["input_ids"]),
            query_length=0,
            attention_mask=tokens["attention_mask"],
        ).last_hidden_state
        hidden = hidden.to(dtype=m.text_projection.weight.dtype)
        return m.text_projection(hidden[:, 0, :])

    def item_features(
        self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor], tokens: Mapping[str, Any]
    ) -> torch.Tensor:
        """Unnormalised (B, K, embed_dim) fused image+caption embeddings (multimodal Q-Former,
        module docstring), with grad when grad is enabled."""
        return self._queries(self._vision_states(pixel_values), tokens)

    def encode_items(
        self,
        images: Sequence[Any] | torch.Tensor,
        texts: Sequence[str],
        batch_size: int | None = None,
        *,
        as_tensor: bool = False,
        progress: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """L2-normalised float32 (N, K, embed_dim) embeddings of image ``i`` with caption
        ``texts[i]`` (images as for ``encode_images``: PIL, arrays, ``ImageRef``s, paths, bytes,
        or a batch tensor of uint8 crops / preprocessed pixels, as the encode pipeline has)."""
        texts = check_texts(texts, what="caption")
        if isinstance(images, torch.Tensor):
            batch = images
            if len(batch) != len(texts):
                raise XmrError(f"encode_items: {len(batch)} images but {len(texts)} captions")
            size = batch_size or len(texts) or 1

            def run_slice(idx: slice) -> torch.Tensor:
                tokens = self._to_device(self.tokenize(texts[idx]))
                return self.item_features(self._pixels(batch[idx]), tokens)

            chunks = [slice(i, i + size) for i in range(0, len(texts), size)]
            return self._encode_chunks(chunks, len(texts), run_slice, as_tensor, progress, "items")
        images = list(images)
        if len(images) != len(texts):
            raise XmrError(f"encode_items: {len(images)} images but {len(texts)} captions")
        batch_size = batch_size or self.default_image_batch_size
        pairs = list(zip(images, texts, strict=True))

        def run(chunk: list[tuple[Any, str]]) -> torch.Tensor:
            draft_size = getattr(self.preprocess, "draft_size", None)
            crops = [self.preprocess.crop(load_image(im, draft_size)) for im, _ in chunk]
            pixels = self._pixels(_collate_crops(crops))
            tokens = self._to_device(self.tokenize([t for _, t in chunk]))
            return self.item_features(pixels, tokens)

        return self._encode(pairs, batch_size, run, as_tensor, progress, "items")
