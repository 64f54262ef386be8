"""``mplug:DIR``: ModelScope's mPLUG image-text retrieval model as an xmr cross-encoder.

Loads a directory in ModelScope's layout (:mod:`xmr.models.mplug.layout`) into xmr's
re-implementation of the ITM score path (:mod:`xmr.models.mplug.modeling`), with the
checkpoint's own preprocessing:

* image: RGB, resized to ``image_res`` x ``image_res`` with PIL bicubic (no crop), scaled to
  [0, 1], normalised with CLIP's mean and std (ModelScope's ``MPlugPreprocessor``);
* text: lower-cased, BERT WordPiece from the directory's ``vocab.txt``, truncated at 25 tokens
  (ModelScope's ``tokenizer_max_length``). ModelScope pads to 25; xmr pads to the longest text of
  the batch, which gives the same scores (padding is masked out) for less work.

``logits`` are the two ITM logits; ``score`` is ModelScope's ``softmax(...)[:, 1]``, the second
of the two numbers its pipeline returns as ``scores``.

Where xmr differs, on purpose:

* ModelScope loads with ``strict=False`` and says nothing when a weight is missing; xmr refuses a
  checkpoint that lacks a weight the score path reads, or holds one of another shape.
* ModelScope's inference path always applies ``visn_fc`` and fails for a model whose vision width
  equals its text width (no ``visn_fc``); xmr then skips it, as ModelScope's training path does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.errors import DataError, XmrError
from xmr.models.cross_encoders import CrossEncoder, check_pairs, register_cross_encoder
from xmr.models.mplug.layout import (
    CONFIG_YAML,
    CONFIGURATION,
    VOCAB,
    WEIGHTS,
    read_config,
    read_state_dict,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage

# ModelScope's MPlugPreprocessor(tokenizer_max_length=25).
DEFAULT_MAX_TEXT_TOKENS = 25
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_weights(model: Any, state: dict[str, Any], source: Path) -> list[str]:
    """Copy ``state`` into ``model`` key for key; return the checkpoint keys left unread.

    Raises:
        DataError: a weight the model needs is absent or has another shape (names it).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"lacks weights the ITM score needs: {', '.join(missing[:3])}{more}",
            file=source / WEIGHTS,
        )
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise DataError(
                f"weight '{key}' has shape {tuple(state[key].shape)}, the configuration "
                f"({CONFIG_YAML}, config_bert.json) gives {tuple(tensor.shape)}",
                file=source / WEIGHTS,
            )
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return sorted(k for k in state if k not in own)


class MplugCrossEncoder(CrossEncoder):
    """mPLUG image-text matching (``MPlugForImageTextRetrieval``'s ITM head) from a local
    ModelScope directory, e.g. ``damo/mplug_image-text-retrieval_flickr30k_large_en``.

    Attributes:
        model: the :class:`~xmr.models.mplug.modeling.MplugItm` (trainable, fp32 weights).
        tokenizer: the directory's BERT tokenizer.
        image_res: the square input size of the vision tower.
        unused_keys: checkpoint entries the ITM path does not read (momentum copies, queues,
            contrastive projections, CLIP's text tower); kept when the model is saved.
    """

    def __init__(
        self,
        source: str,
        *,
        device: str | None = None,
        precision: str = "fp32",
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
    ) -> None:
        from xmr.models.base import resolve_device, resolve_precision
        from xmr.models.mplug.modeling import MplugItm

        root = Path(source).expanduser()
        if not root.is_dir():
            raise XmrError(
                f"mplug:{source}: not a directory (mPLUG loads from a local ModelScope model "
                f"directory: {CONFIGURATION}, {CONFIG_YAML}, config_bert.json, {VOCAB}, {WEIGHTS})"
            )
        if max_text_tokens < 2:
            raise XmrError(f"max_text_tokens must be >= 2, got {max_text_tokens}")
        self.source = str(root)
        self.spec = f"mplug:{root}"
        self.config = read_config(root)
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.precision = resolve_precision(precision, self.torch_device)
        self.image_res = self.config.image_res
        self.max_text_tokens = int(min(max_text_tokens, self.config.bert.max_position_embeddings))
        self.tokenizer = _tokenizer(root)
        model = MplugItm(self.config)
        self.unused_keys = load_weights(model, read_state_dict(root), root)
        self.model = model.to(self.torch_device).eval()

    # -- preprocessing ---------------------------------------------------------------------
    def pixel_values(self, images: Sequence[PILImage.Image]):
        """(n, 3, image_res, image_res) float32, as ModelScope's Resize + ToTensor + Normalize."""
        import torch
        from PIL import Image

        size = (self.image_res, self.image_res)
        mean = np.asarray(CLIP_MEAN, dtype=np.float32)
        std = np.asarray(CLIP_STD, dtype=np.float32)
        arrays = []
        for im in images:
            resized = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
            pixels = np.asarray(resized, dtype=np.float32) / 255.0
            arrays.append(((pixels - mean) / std).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrays)).to(self.torch_device)

    def tokenize(self, texts: Sequence[str]):
        enc = self.tokenizer(
            [t.lower() for t in texts],
            padding="longest",
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.torch_device), enc["attention_mask"].to(self.torch_device)

    # -- scoring ---------------------------------------------------------------------------
    def _autocast(self):
        import torch

        from xmr.models.base import PRECISIONS

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=PRECISIONS[self.precision])

    def forward_logits(self, images: Sequence[PILImage.Image], texts: Sequence[str]):
        """Differentiable ITM logits (torch, (n, 2)) for one batch of aligned pairs.

        Distinct images (by object identity) go through the vision tower once.
        """
        import torch

        slot: dict[int, int] = {}
        unique: list[PILImage.Image] = []
        index = []
        for im in images:
            if id(im) not in slot:
                slot[id(im)] = len(unique)
                unique.append(im)
            index.append(slot[id(im)])
        image_embeds = self.model.encode_images(self.pixel_values(unique))
        image_embeds = image_embeds[torch.tensor(index, device=image_embeds.device)]
        input_ids, attention_mask = self.tokenize(texts)
        return self.model.itm_logits(image_embeds, input_ids, attention_mask)

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

    # -- saving ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model in ModelScope's layout (loadable by ModelScope and by ``mplug:``).

        The configuration files and vocabulary are copied from the source directory; the
        weights file is the source checkpoint with this model's (possibly fine-tuned) weights
        in place of the ones it read. Each file is written atomically.
        """
        import torch

        from xmr.io.atomic import atomic_write, check_output_dir

        out = check_output_dir(path)
        out.mkdir(parents=True, exist_ok=True)
        source = Path(self.source)
        state = read_state_dict(source)
        state.update({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

        def write_weights(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.save(state, fh)

        atomic_write(out / WEIGHTS, write_weights)
        # Everything else of the source (vocabulary, configs, README, tokenizer files) as it is;
        # the model card last: it is what marks the directory as an mPLUG model.
        skip = {WEIGHTS, CONFIGURATION, "itm_train.json"}
        files = [
            p.name
            for p in sorted(source.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name not in skip
        ]
        bert_config = str(self.config.yaml.get("bert_config", "config_bert.json"))
        if bert_config not in files:
            files.append(bert_config)
        for name in [*files, CONFIGURATION]:
            if (source / name).resolve() == (out / name).resolve():
                continue
            data = (source / name).read_bytes()
            atomic_write(out / name, lambda tmp, data=data: tmp.write_bytes(data))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model_class": "MPlugForImageTextRetrieval",
            "precision": self.precision,
            "image_res": self.image_res,
            "max_text_tokens": self.max_text_tokens,
            "unused_checkpoint_keys": len(self.unused_keys),
        }


def _tokenizer(root: Path) -> Any:
    from transformers import BertTokenizer

    from xmr.models.blip_itm import quiet_transformers

    try:
        with quiet_transformers():
            # What ModelScope's MPlugPreprocessor does: BertTokenizer.from_pretrained(model_dir).
            return BertTokenizer.from_pretrained(str(root))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot build the BERT tokenizer ({exc})", file=root / VOCAB) from None


@register_cross_encoder("mplug")
def _create_mplug(source: str, **kwargs: Any) -> CrossEncoder:
    return MplugCrossEncoder(source, **kwargs)
