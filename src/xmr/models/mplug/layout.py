"""ModelScope's on-disk layout of an mPLUG model, read (and written) without ModelScope.

A model directory as ``snapshot_download("damo/mplug_image-text-retrieval_flickr30k_large_en")``
leaves it::

    configuration.json   ModelScope's card: {"framework": "pytorch", "task": "image-text-retrieval",
                         "model": {"type": "mplug"}, "pipeline": {"type": "image-text-retrieval"}, ...}
    config.yaml          MPlugConfig: task, bert_config, image_res, clip_name, vision_width,
                         clip_vision_* (the CLIP ViT), embed_dim, temp, queue_size, momentum, ...
    config_bert.json     BertConfig of the text and fusion encoders, plus mPLUG's
                         text_encoder_layers, fusion_layers, stride_layer, encoder_width
    vocab.txt            BERT WordPiece vocabulary (BertTokenizer, lower-cased)
    pytorch_model.bin    torch.save of the state dict, possibly under "model" or "module", keys
                         possibly prefixed "model." (ModelScope strips every "model.")

:func:`read_config` reads the three configuration files into a :class:`MplugConfig`;
:func:`read_state_dict` reads the weights the way ``MPlug.from_pretrained`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from xmr.errors import DataError, XmrError

CONFIGURATION = "configuration.json"
CONFIG_YAML = "config.yaml"
WEIGHTS = "pytorch_model.bin"
VOCAB = "vocab.txt"
RETRIEVAL_TASK = "image-text-retrieval"

# MPlugConfig's defaults (modelscope/models/multi_modal/mplug/configuration_mplug.py) for the
# keys the retrieval forward reads; config.yaml overrides them.
YAML_DEFAULTS: dict[str, Any] = {
    "task": "visual-question-answering",
    "bert_config": "config_bert.json",
    "image_res": 504,
    "vision_width": 1024,
    "clip_name": "ViT-L-14",
    "clip_vision_layers": 24,
    "clip_vision_width": 1024,
    "clip_vision_patch_size": 14,
}

# BertConfig's defaults for the keys the text and fusion encoders read.
BERT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "add_cross_attention": False,
}
BERT_REQUIRED = ("vocab_size", "text_encoder_layers", "fusion_layers", "encoder_width")


@dataclass
class MplugConfig:
    """What the ITM forward and the preprocessing need from a model directory."""

    path: Path
    task: str
    image_res: int
    vision_width: int
    clip_name: str
    clip_vision_layers: int
    clip_vision_width: int
    clip_vision_patch_size: int
    bert: Any  # namespace of config_bert.json values (BertConfig attribute names)
    yaml: dict[str, Any] = field(default_factory=dict)


def is_mplug_dir(path: Path) -> bool:
    """True when ``path`` looks like a ModelScope mPLUG model directory."""
    card = path / CONFIGURATION
    if not (card.is_file() and (path / CONFIG_YAML).is_file()):
        return False
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and str(model.get("type", "")).lower() == "mplug"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("missing file (ModelScope's mPLUG layout needs it)", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"not JSON ({exc})", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable ({exc})", file=path) from None
    if not isinstance(data, dict):
        raise DataError("must hold a JSON object", file=path)
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise DataError("missing file (ModelScope's mPLUG layout needs it)", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"not YAML ({str(exc).splitlines()[0]})", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"unreadable ({exc})", file=path) from None
    if not isinstance(data, dict):
        raise DataError("must hold a YAML mapping", file=path)
    return data


def _int(value: Any, file: Path, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"must be an integer >= {minimum}, got {value!r}", file=file, field=name)
    return value


def read_config(path: str | Path) -> MplugConfig:
    """Read configuration.json, config.yaml and the BERT config of an mPLUG directory.

    Raises:
        DataError: a file is missing or malformed, or a field is out of range (names which).
        XmrError: the model is not an image-text retrieval model (a captioning or VQA mPLUG
            has no ITM head).
    """
    root = Path(path)
    card = _read_json(root / CONFIGURATION)
    yaml_path = root / CONFIG_YAML
    raw = _read_yaml(yaml_path)
    values = {**YAML_DEFAULTS, **raw}
    task = str(card.get("task") or values["task"])
    if task != RETRIEVAL_TASK:
        raise XmrError(
            f"{root}: an mPLUG '{task}' model (configuration.json task); only "
            f"'{RETRIEVAL_TASK}' models have the image-text matching head a cross-encoder needs"
        )
    ints = {
        k: _int(values[k], yaml_path, k)
        for k in (
            "image_res",
            "vision_width",
            "clip_vision_layers",
            "clip_vision_width",
            "clip_vision_patch_size",
        )
    }
    if isinstance(values["clip_vision_layers"], list | tuple):
        raise DataError(
            "a ResNet CLIP tower is not supported", file=yaml_path, field="clip_vision_layers"
        )
    if ints["clip_vision_width"] % 64:
        raise DataError(
            "must be a multiple of 64 (CLIP's ViT has width // 64 heads)",
            file=yaml_path,
            field="clip_vision_width",
        )
    if ints["clip_vision_width"] != ints["vision_width"]:
        raise DataError(
            f"vision_width {ints['vision_width']} differs from clip_vision_width "
            f"{ints['clip_vision_width']} (the ViT's output width)",
            file=yaml_path,
            field="vision_width",
        )
    bert_path = root / str(values["bert_config"])
    bert_raw = _read_json(bert_path)
    bert = {**BERT_DEFAULTS, **bert_raw}
    for key in BERT_REQUIRED:
        if key not in bert:
            raise DataError("missing (mPLUG's BERT config needs it)", file=bert_path, field=key)
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "vocab_size",
        "encoder_width",
    ):
        _int(bert[key], bert_path, key)
    _int(bert["text_encoder_layers"], bert_path, "text_encoder_layers", minimum=0)
    _int(bert["fusion_layers"], bert_path, "fusion_layers")
    if "stride_layer" in bert:
        _int(bert["stride_layer"], bert_path, "stride_layer")
    if bert["hidden_size"] % bert["num_attention_heads"]:
        raise DataError(
            "hidden_size is not a multiple of num_attention_heads",
            file=bert_path,
            field="hidden_size",
        )
    if bert["add_cross_attention"]:
        raise DataError(
            "must be false: mPLUG's text encoder has no cross-attention",
            file=bert_path,
            field="add_cross_attention",
        )
    if bert["encoder_width"] != bert["hidden_size"]:
        # The fusion layers attend to the image after visn_fc has mapped it to hidden_size.
        raise DataError(
            f"encoder_width {bert['encoder_width']} differs from hidden_size {bert['hidden_size']}",
            file=bert_path,
            field="encoder_width",
        )
    if bert["hidden_act"] not in ("gelu", "relu", "gelu_new"):
        raise DataError(
            f"unsupported activation {bert['hidden_act']!r}", file=bert_path, field="hidden_act"
        )
    if not (root / VOCAB).is_file():
        raise DataError("missing file (the BERT vocabulary)", file=root / VOCAB)
    return MplugConfig(
        path=root,
        task=task,
        clip_name=str(values["clip_name"]),
        bert=SimpleNamespace(**bert),
        yaml=raw,
        **ints,
    )


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """``pytorch_model.bin`` as ``MPlug.from_pretrained`` reads it: the dict under "model" or
    "module" if there is one, and every ``"model."`` removed from the keys."""
    import pickle
    import zipfile

    import torch

    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise DataError("missing file (the model weights)", file=weights)
    try:
        try:  # memory-mapped: a 2.4 GB mPLUG-L file is not read into memory twice
            checkpoint = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "zip" not in str(exc).lower():
                raise
            checkpoint = torch.load(weights, map_location="cpu", weights_only=True)  # legacy format
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"not a torch checkpoint ({first})", file=weights) from None
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        checkpoint = checkpoint["model"]
    if isinstance(checkpoint, dict) and "module" in checkpoint:
        checkpoint = checkpoint["module"]
    if not isinstance(checkpoint, dict):
        raise DataError("holds no state dict", file=weights)
    return {str(k).replace("model.", ""): v for k, v in checkpoint.items()}
