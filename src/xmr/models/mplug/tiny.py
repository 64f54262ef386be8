"""A tiny random mPLUG retrieval model in ModelScope's exact on-disk layout, built offline.

The directory holds what a ModelScope snapshot of ``damo/mplug_image-text-retrieval_*`` holds
(configuration.json, config.yaml, config_bert.json, vocab.txt, pytorch_model.bin), with the
weights under ``"model"`` as mPLUG's training script saves them, and also the entries the ITM
path never reads (contrastive projections, temperature, queues, CLIP's projection, the fusion
layers below ``start_layer``), so that loading it exercises what loading the real one does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.errors import XmrError
from xmr.models.mplug.layout import CONFIG_YAML, CONFIGURATION, RETRIEVAL_TASK, VOCAB, WEIGHTS


def create_tiny_mplug(
    out_dir: str | os.PathLike,
    *,
    words: Sequence[str] = (),
    hidden: int = 32,
    heads: int = 2,
    vision_width: int = 64,
    vision_layers: int = 1,
    text_layers: int = 1,
    fusion_layers: int = 2,
    stride_layer: int = 1,
    unused_fusion_layers: int = 1,
    image_res: int = 28,
    patch_size: int = 14,
    embed_dim: int = 16,
    queue_size: int = 8,
    seed: int = 0,
) -> Path:
    """Write a tiny random mPLUG image-text retrieval model to ``out_dir``.

    ``stride_layer=1`` with two fusion layers makes the second one a skip-connection layer
    (self-attention over ``[image; text]``), so both kinds of fusion layer are exercised.
    ``vision_width`` must be a multiple of 64 (CLIP's ViT has ``width // 64`` heads).
    Load it with ``create_cross_encoder("mplug:OUT")``.
    """
    import torch
    import yaml

    from xmr.io.atomic import atomic_write, atomic_write_json, check_output_dir
    from xmr.models.blip_itm import tiny_vocab
    from xmr.models.mplug.layout import read_config
    from xmr.models.mplug.modeling import MplugItm

    if vision_width % 64:
        raise XmrError(f"vision_width must be a multiple of 64, got {vision_width}")
    if image_res % patch_size:
        raise XmrError(f"image_res {image_res} is not a multiple of patch_size {patch_size}")
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(words)
    atomic_write(
        out / VOCAB,
        lambda tmp: tmp.write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8"),
    )
    atomic_write_json(
        out / "config_bert.json",
        {
            "architectures": ["BertForMaskedLM"],
            "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": hidden * 4,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": 64,
            "model_type": "bert",
            "num_attention_heads": heads,
            "num_hidden_layers": fusion_layers + unused_fusion_layers,
            "pad_token_id": 0,
            "type_vocab_size": 2,
            "vocab_size": len(vocab),
            "encoder_width": hidden,
            "add_cross_attention": False,
            "use_cache": False,
            "gradient_checkpointing": True,
            "text_encoder_layers": text_layers,
            "fusion_layers": fusion_layers,
            "text_decode_layers": 1,
            "stride_layer": stride_layer,
        },
    )
    settings: dict[str, Any] = {
        "task": RETRIEVAL_TASK,
        "bert_config": "config_bert.json",
        "image_res": image_res,
        "batch_size_train": 4,
        "batch_size_test": 4,
        "vision_width": vision_width,
        "distill": False,
        "clip_name": "ViT-L-14",
        "clip_embed_dim": embed_dim,
        "clip_image_resolution": image_res,
        "clip_vision_layers": vision_layers,
        "clip_vision_width": vision_width,
        "clip_vision_patch_size": patch_size,
        "clip_context_length": 8,
        "clip_vocab_size": 64,
        "clip_transformer_width": 64,
        "clip_transformer_heads": 1,
        "clip_transformer_layers": 1,
        "queue_size": queue_size,
        "momentum": 0.995,
        "embed_dim": embed_dim,
        "temp": 0.07,
        "alpha": 0.4,
        "k_test": 4,
    }
    atomic_write(
        out / CONFIG_YAML,
        lambda tmp: tmp.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8"),
    )
    card = {
        "framework": "pytorch",
        "task": RETRIEVAL_TASK,
        "model": {"type": "mplug"},
        "pipeline": {"type": RETRIEVAL_TASK},
        "preprocessor": {"type": "mplug-tasks-preprocessor"},
    }
    atomic_write_json(out / CONFIGURATION, card)
    config = read_config(out)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MplugItm(config)
        visual = model.visual_encoder.visual
        scale = vision_width**-0.5
        with torch.no_grad():
            visual.class_embedding.normal_(0.0, scale)
            visual.positional_embedding.normal_(0.0, scale)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        extra = _unused_entries(config, embed_dim, queue_size, unused_fusion_layers)
    state.update(extra)

    def write_weights(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save({"model": state}, fh)

    atomic_write(out / WEIGHTS, write_weights)
    return out


def _unused_entries(config: Any, embed_dim: int, queue_size: int, lower: int) -> dict[str, Any]:
    """Random tensors for checkpoint keys the ITM path ignores, shaped as the real ones."""
    import torch

    from xmr.models.mplug.modeling import FusionLayer, ResidualAttentionBlock

    hidden = config.bert.hidden_size
    width = config.clip_vision_width
    entries: dict[str, Any] = {
        "vision_proj.weight": torch.randn(embed_dim, hidden),
        "vision_proj.bias": torch.zeros(embed_dim),
        "text_proj.weight": torch.randn(embed_dim, hidden),
        "text_proj.bias": torch.zeros(embed_dim),
        "temp": torch.tensor(0.07),
        "image_queue": torch.nn.functional.normalize(torch.randn(embed_dim, queue_size), dim=0),
        "text_queue": torch.nn.functional.normalize(torch.randn(embed_dim, queue_size), dim=0),
        "idx_queue": torch.full((1, queue_size), -100),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
        "visual_encoder.visual.proj": torch.randn(width, embed_dim) * width**-0.5,
        "visual_encoder.logit_scale": torch.ones([]),
        "text_encoder.embeddings.position_ids": torch.arange(
            config.bert.max_position_embeddings
        ).expand((1, -1)),
    }
    # CLIP's text tower (ModelScope builds the whole CLIP model; mPLUG uses only .visual).
    text_width, text_layers = (
        config.yaml["clip_transformer_width"],
        config.yaml["clip_transformer_layers"],
    )
    context, clip_vocab = config.yaml["clip_context_length"], config.yaml["clip_vocab_size"]
    for i in range(text_layers):
        block = ResidualAttentionBlock(text_width, config.yaml["clip_transformer_heads"])
        for k, v in block.state_dict().items():
            entries[f"visual_encoder.transformer.resblocks.{i}.{k}"] = v.detach().clone()
    entries["visual_encoder.token_embedding.weight"] = torch.randn(clip_vocab, text_width) * 0.02
    entries["visual_encoder.positional_embedding"] = torch.randn(context, text_width) * 0.01
    entries["visual_encoder.ln_final.weight"] = torch.ones(text_width)
    entries["visual_encoder.ln_final.bias"] = torch.zeros(text_width)
    entries["visual_encoder.text_projection"] = (
        torch.randn(text_width, embed_dim) * text_width**-0.5
    )
    for i in range(lower):  # the fusion layers below start_layer: in the file, never run
        layer = FusionLayer(config.bert)
        for k, v in layer.state_dict().items():
            entries[f"fusion_encoder.encoder.layer.{i}.{k}"] = v.detach().clone()
    return entries


def tiny_mplug_summary(path: str | Path) -> str:
    """One line naming what ``create_tiny_mplug`` wrote (for the CLI)."""
    config = json.loads((Path(path) / "config_bert.json").read_text(encoding="utf-8"))
    return (
        f"hidden {config['hidden_size']}, {config['text_encoder_layers']} text + "
        f"{config['fusion_layers']} fusion layers (skip every {config['stride_layer']})"
    )
