"""The mPLUG image-text retrieval network, ITM score path, re-implemented in plain torch.

This is the computation of ModelScope's ``MPlugForImageTextRetrieval.forward(train=False)``
(``modelscope/models/multi_modal/mplug/modeling_mplug.py`` and ``clip/clip.py``), written here
because ModelScope's mPLUG code cannot be imported beside xmr's CPU torch: it imports ``timm``,
which imports ``torchvision``, which pulls another torch with CUDA wheels.

The forward pass, in ModelScope's order::

    image_embeds = visual_encoder.visual(pixels, skip_last_layer=True)   # CLIP ViT, ln_post, no proj
    image_embeds = visn_layer_norm(visn_fc(image_embeds))                # vision width -> text width
    text_embeds  = text_encoder(input_ids, attention_mask)               # BERT, text_encoder_layers
    _, fused     = fusion_encoder(text_embeds, image_embeds)             # layers start..end of
                                                                         # num_hidden_layers
    logits       = itm_head(fused[:, 0])                                 # column 1 = "match"

A fusion layer is self-attention over the text, cross-attention to the image, feed-forward;
every ``stride_layer``-th one (counted from the first fusion layer, never the first itself) is
mPLUG's skip connection instead: self-attention and feed-forward over ``[image; text]``, whose
image half is added to the image states the next layers attend to.

Every module has the attribute name ModelScope's has, so a state-dict key of
``pytorch_model.bin`` loads into the parameter of the same name, one to one (see
:data:`UNUSED_PREFIXES` for the keys the ITM path never reads). The fusion layers below
``start_layer`` exist in the checkpoint but are never run; they are ``nn.Identity``
placeholders here, which keeps the indices of the others equal to ModelScope's.

(One module, just over 400 lines, on purpose: one network, module for module as ModelScope
writes it, so the two can be read side by side.)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Checkpoint keys that the ITM score path does not read: the momentum (distillation) copies,
# the contrastive projections, temperature and queues, the CLIP text tower and final projection
# (``skip_last_layer=True`` stops before it), BERT's position-id buffer.
UNUSED_PREFIXES = (
    "visual_encoder_m.",
    "text_encoder_m.",
    "fusion_encoder_m.",
    "vision_proj",
    "text_proj",
    "visn_fc_m.",
    "visn_layer_norm_m.",
    "temp",
    "image_queue",
    "text_queue",
    "idx_queue",
    "queue_ptr",
    "visual_encoder.transformer.",
    "visual_encoder.token_embedding.",
    "visual_encoder.positional_embedding",
    "visual_encoder.ln_final.",
    "visual_encoder.text_projection",
    "visual_encoder.logit_scale",
    "visual_encoder.visual.proj",
    "text_encoder.embeddings.position_ids",
    "text_decoder.",
)


def clamp_inf(tensor: torch.Tensor) -> torch.Tensor:
    """ModelScope's guard: in fp16, infinities are clamped to the largest finite value - 1000."""
    if tensor.dtype == torch.float16 and torch.isinf(tensor).any():
        limit = torch.finfo(tensor.dtype).max - 1000
        tensor = torch.clamp(tensor, min=-limit, max=limit)
    return tensor


# ---------------------------------------------------------------------------------------------
# Vision: OpenAI CLIP's VisualTransformer (ViT-B-16 / ViT-L-14), stopping at ln_post.
# ---------------------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: computed as usual, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).type(x.dtype)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisualTransformer(nn.Module):
    """Patch embedding, class token, positions for ``image_res``, pre-LN transformer, ln_post."""

    def __init__(self, image_res: int, patch_size: int, width: int, layers: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        # ModelScope replaces CLIP's 224px table by one for image_res (the checkpoint holds it).
        self.positional_embedding = nn.Parameter(
            torch.zeros((image_res // patch_size) ** 2 + 1, width)
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, width // 64)  # CLIP's head count
        self.ln_post = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)[: x.size(1), :]
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x)  # skip_last_layer=True: no projection


class VisualEncoder(nn.Module):
    """Holds ``visual`` so the keys read ``visual_encoder.visual.*`` as in the checkpoint."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.visual = VisualTransformer(**kwargs)


# ---------------------------------------------------------------------------------------------
# Text and fusion: ModelScope's BERT layers.
# ---------------------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        token_types = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_types)
            + self.position_embeddings(positions)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: Any, key_width: int) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_size = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(key_width, cfg.hidden_size)
        self.value = nn.Linear(key_width, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        q = self._split(self.query(hidden))
        k = self._split(self.key(context))
        v = self._split(self.value(context))
        scores = clamp_inf(torch.matmul(q, k.transpose(-1, -2)))
        scores = scores / math.sqrt(self.head_size) + mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return out.view(*out.shape[:-2], self.heads * self.head_size)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: Any, key_width: int | None = None) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, key_width or cfg.hidden_size)
        self.output = BertSelfOutput(cfg)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        attended = self.self(hidden, hidden if context is None else context, mask)
        return self.output(attended, hidden)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        if cfg.hidden_act not in ("gelu", "relu", "gelu_new"):
            raise ValueError(f"unsupported hidden_act '{cfg.hidden_act}'")
        self.act = cfg.hidden_act
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense(x)
        if self.act == "relu":
            return F.relu(x)
        return F.gelu(x, approximate="tanh" if self.act == "gelu_new" else "none")


class BertOutput(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(clamp_inf(self.dropout(clamp_inf(self.dense(hidden)))) + residual)


class BertLayer(nn.Module):
    """Text-encoder layer: self-attention, feed-forward."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(hidden, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: Any, layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(layers)])


class BertModel(nn.Module):
    """``text_encoder``: embeddings and ``text_encoder_layers`` self-attention layers."""

    def __init__(self, cfg: Any, layers: int) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg, layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = extended_mask(attention_mask, self.embeddings.LayerNorm.weight.dtype)
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


class FusionLayer(nn.Module):
    """Self-attention, cross-attention to the image, feed-forward (or, as a skip layer,
    self-attention and feed-forward over ``[image; text]``)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.crossattention = BertAttention(cfg, key_width=cfg.encoder_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        image: torch.Tensor,
        image_mask: torch.Tensor,
        skip: bool,
    ) -> torch.Tensor:
        if skip:
            joint = torch.cat([image, text], dim=1)
            x = self.attention(joint, torch.cat([image_mask, text_mask], dim=3))
        else:
            x = self.attention(text, text_mask)
            x = self.crossattention(x, image_mask, context=image)
        return self.output(self.intermediate(x), x)


class FusionEncoder(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        total = cfg.num_hidden_layers
        self.start_layer = max(0, total - cfg.fusion_layers)
        self.stride_layer = int(getattr(cfg, "stride_layer", 100))
        self.layer = nn.ModuleList(
            [nn.Identity() if i < self.start_layer else FusionLayer(cfg) for i in range(total)]
        )


class FusionModel(nn.Module):
    """``fusion_encoder``: the fusion layers (no embeddings of its own; reads the text states)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.encoder = FusionEncoder(cfg)

    def forward(
        self, text: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        enc = self.encoder
        dtype = next(self.parameters()).dtype  # ModelScope's self.dtype: the weights' dtype
        text_mask = extended_mask(attention_mask, dtype)
        # invert_attention_mask of an all-ones image mask: zeros.
        image_mask = torch.zeros(
            image.shape[0], 1, 1, image.shape[1], dtype=dtype, device=image.device
        )
        n_image = image.shape[1]
        for i in range(enc.start_layer, len(enc.layer)):
            n = i - enc.start_layer
            skip = n != 0 and n % enc.stride_layer == 0
            out = enc.layer[i](text, text_mask, image, image_mask, skip)
            if skip:
                new_image, text = torch.split(out, (n_image, out.shape[1] - n_image), dim=1)
                image = image + new_image  # ModelScope adds in place; the values are the same
            else:
                text = out
        return text


def extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, length) 1/0 mask -> additive (batch, 1, 1, length) mask, -10000 where 0 (BERT's)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0


class MplugItm(nn.Module):
    """The retrieval model's modules that the ITM score reads (names as in the checkpoint)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        bert = config.bert
        self.visual_encoder = VisualEncoder(
            image_res=config.image_res,
            patch_size=config.clip_vision_patch_size,
            width=config.clip_vision_width,
            layers=config.clip_vision_layers,
        )
        self.text_encoder = BertModel(bert, bert.text_encoder_layers)
        self.fusion_encoder = FusionModel(bert)
        self.large = bert.hidden_size != config.vision_width
        if self.large:
            self.visn_fc = nn.Linear(config.vision_width, bert.hidden_size)
            self.visn_layer_norm = nn.LayerNorm(bert.hidden_size, eps=1e-12)
            self.dropout = nn.Dropout(bert.hidden_dropout_prob)
        self.itm_head = nn.Linear(bert.hidden_size, 2)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image states the fusion layers attend to, (batch, patches + 1, text width)."""
        x = self.visual_encoder.visual(pixels.to(self.visual_encoder.visual.conv1.weight.dtype))
        if self.large:
            x = self.dropout(self.visn_layer_norm(self.visn_fc(x)))
        return x

    def itm_logits(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Two-class ITM logits (before ModelScope's softmax), (batch, 2)."""
        text = self.text_encoder(input_ids, attention_mask)
        fused = self.fusion_encoder(text, attention_mask, image_embeds)
        return self.itm_head(fused[:, 0, :])
