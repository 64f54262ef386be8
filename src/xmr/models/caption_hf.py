"""The ``hf`` captioner: a local transformers captioning model, batched, on GPU when present.

Loads with ``from_pretrained`` from a hub id or a ``save_pretrained`` directory (model and
processor side by side):

- BLIP (``model_type`` ``blip``, ``BlipForConditionalGeneration``) and BLIP-2 (``blip-2``,
  ``Blip2ForConditionalGeneration``) caption *unconditionally*: they continue a text prefix
  rather than follow an instruction, so the prompt is **not** given to them (evalscope's
  instruction would become the start of the caption). The prompt still keys the cache.
- Any other image-text-to-text model (``AutoModelForImageTextToText``: Qwen2-VL, LLaVA,
  Idefics, ...) gets the prompt and the image through its processor's chat template, and can
  answer text-only requests (translation) the same way.

Greedy decoding at temperature 0 (the default), sampling above it; ``max_tokens`` caps the new
tokens (40 when unset). An empty generation is a failure, as with the API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.errors import DataError, XmrError
from xmr.models.captioners import (
    CaptionRequest,
    CaptionResult,
    GenerationParams,
    OnResult,
    register_captioner,
)

DEFAULT_MAX_NEW_TOKENS = 40
_PREFIX_CAPTIONERS = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
}


def _model_type(source: str) -> str | None:
    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise XmrError(f"{config}: not a readable model config ({exc})") from None


class HFCaptioner:
    """A transformers captioning model; see the module docs."""

    def __init__(
        self,
        source: str,
        *,
        params: GenerationParams,
        device: str | None = None,
        batch_size: int = 8,
    ) -> None:
        import torch
        import transformers

        from xmr.models.blip_itm import quiet_transformers

        if batch_size < 1:
            raise XmrError("batch_size must be >= 1")
        self.model = f"hf:{source}"
        self.params = params
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model_type = _model_type(source)
        if model_type is None and not Path(source).exists():
            # A hub id: ask its config (from the cache, or the hub when reachable).
            try:
                model_type = transformers.AutoConfig.from_pretrained(source).model_type
            except Exception as exc:
                raise _load_error(source, exc) from None
        self.prefix_model = model_type in _PREFIX_CAPTIONERS
        model_class = (
            getattr(transformers, _PREFIX_CAPTIONERS[model_type])
            if self.prefix_model
            else transformers.AutoModelForImageTextToText
        )
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            with quiet_transformers():
                self.processor = transformers.AutoProcessor.from_pretrained(source)
                self.net = model_class.from_pretrained(source, dtype=dtype).to(self.device).eval()
        except Exception as exc:
            raise _load_error(source, exc) from None
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if not self.prefix_model:
            # A decoder-only model continues the last position of each row: pad on the left.
            self.tokenizer.padding_side = "left"

    def run(self, requests: Sequence[CaptionRequest], on_result: OnResult) -> None:
        """Answer the requests ``batch_size`` at a time; ``on_result`` gets each answer."""
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start : start + self.batch_size])
            started = time.monotonic()
            ready, images = [], []
            for request in batch:
                if request.image is None and self.prefix_model:
                    on_result(_failed(request, "a BLIP captioner cannot answer text-only requests"))
                    continue
                try:
                    images.append(request.image.open() if request.image is not None else None)
                except DataError as exc:
                    on_result(_failed(request, f"image: {exc}"))
                    continue
                ready.append(request)
            if not ready:
                continue
            answers = self._generate(ready, images)
            latency = (time.monotonic() - started) / len(ready)
            for request, (text, usage) in zip(ready, answers, strict=True):
                result = CaptionResult(request.key, usage=usage, latency_s=latency)
                if text:
                    result.text = text
                else:
                    result.error = "empty answer"
                on_result(result)

    def _inputs(self, requests: list[CaptionRequest], images: list) -> Any:
        if self.prefix_model:
            return self.processor(images=images, return_tensors="pt")
        conversations = []
        for request, image in zip(requests, images, strict=True):
            content: list[dict] = [{"type": "image"}] if image is not None else []
            content.append({"type": "text", "text": request.prompt})
            turn = [{"role": "user", "content": content}]
            if self.params.system:
                turn.insert(
                    0, {"role": "system", "content": [{"type": "text", "text": self.params.system}]}
                )
            conversations.append(turn)
        texts = [
            self.processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations
        ]
        present = [im for im in images if im is not None]
        if present and len(present) != len(images):
            raise XmrError("a batch mixes image and text-only requests")
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if present:
            kwargs["images"] = present
        return self.processor(**kwargs)

    def _generate(self, requests: list[CaptionRequest], images: list) -> list[tuple[str, dict]]:
        import torch

        inputs = self._inputs(requests, images).to(self.device)
        if "pixel_values" in inputs and self.device.startswith("cuda"):
            inputs["pixel_values"] = inputs["pixel_values"].to(self.net.dtype)
        options: dict[str, Any] = {
            "max_new_tokens": self.params.max_tokens or DEFAULT_MAX_NEW_TOKENS,
            "do_sample": self.params.temperature > 0,
        }
        if self.params.temperature > 0:
            options["temperature"] = self.params.temperature
        if self.params.seed is not None:
            torch.manual_seed(self.params.seed)
        with torch.inference_mode():
            output = self.net.generate(**inputs, **options)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and not self.prefix_model:
            output = output[:, prompt_ids.shape[1] :]  # decoder-only models echo the prompt
        pad = self.tokenizer.pad_token_id
        answers = []
        for row, ids in enumerate(output):
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            prompt_tokens = 0
            if prompt_ids is not None and "attention_mask" in inputs:
                prompt_tokens = int(inputs["attention_mask"][row].sum())
            completion_tokens = int((ids != pad).sum()) if pad is not None else len(ids)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
            answers.append((text, usage))
        return answers


def _failed(request: CaptionRequest, message: str) -> CaptionResult:
    return CaptionResult(request.key, error=message, attempts=0)


def _load_error(source: str, exc: Exception) -> XmrError:
    where = "directory" if Path(source).exists() else "hub id"
    return XmrError(
        f"cannot load captioner {where} '{source}': {str(exc).strip().rstrip('.')}. "
        "A local directory needs config.json, the weights and the processor files "
        "(save_pretrained writes all of them); a hub id needs network access or a filled cache."
    )


@register_captioner("hf")
def _create_hf(target: str, *, params: GenerationParams, **options: Any) -> HFCaptioner:
    return HFCaptioner(target, params=params, **options)


def create_tiny_blip_captioner(path: str | Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny random BLIP captioning model (``BlipForConditionalGeneration``) with its
    processor to ``path`` in save_pretrained format; load it with ``create_captioner(path)``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    from xmr.models.blip_itm import _tiny_processor, quiet_transformers

    processor = _tiny_processor("blip", 32, ())
    vocab_size = len(processor.tokenizer.get_vocab())
    vision = dict(
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        image_size=32,
        patch_size=8,
        initializer_range=0.02,
    )
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        encoder_hidden_size=hidden,
        pad_token_id=0,
        bos_token_id=2,
        sep_token_id=3,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = BlipForConditionalGeneration(config)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.eval().save_pretrained(out)
        processor.save_pretrained(out)
    return out


def create_tiny_llava_captioner(path: str | Path, *, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny random LLaVA (``LlavaForConditionalGeneration``: a CLIP vision tower and a
    Llama decoder), an image-text-to-text model with a chat template, with its processor (a
    word-level tokenizer built here) to ``path``; load it with ``create_captioner(path)``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from xmr.models.blip_itm import quiet_transformers

    words = [
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
        "<image>",
        "USER",
        "ASSISTANT",
        *"abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-",
    ]
    words += [
        "describe",
        "image",
        "translate",
        "the",
        "a",
        "this",
        "picture",
        "text",
        "into",
        "english",
    ]
    tokenizer_model = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer_model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer_model.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_model,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    image_processor_class = image_processor_class or transformers.CLIPImageProcessor
    image_processor = image_processor_class(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS position the "default" strategy drops
        chat_template=template,
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=len(words),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=words.index("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.eval().save_pretrained(out)
        processor.save_pretrained(out)
    return out
