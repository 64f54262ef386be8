"""Tiny random CLIP-family models in transformers' exact on-disk format, built offline.

Tests and the demo use these instead of downloaded weights: the directory ``create_tiny_clip``
writes loads with ``create_encoder("hf:OUT")`` and with ``transformers.CLIPModel`` /
``AutoTokenizer`` / ``AutoImageProcessor`` themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xmr.io.atomic import check_output_dir
from xmr.io.failures import write_failures_named
from xmr.models.hf_clip import quiet_transformers, save_tokenizer
from xmr.models.offline_tokenizer import BOS, EOS, PAD, train_wordpiece
from xmr.models.preprocess import HALF, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocess


def _seeded_init(seed: int, build: Any) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def dataset_texts(dataset: Any, split: str | None = None) -> list[str]:
    """Every text of a RetrievalDataset (queries, training pairs, captions, attributes), in a
    stable order without duplicates: the corpus a tiny model's tokenizer is trained on."""
    seen: dict[str, None] = {}
    splits = [dataset.split(split)] if split else list(dataset.splits.values())
    for sp in splits:
        for query in sp.queries.values():
            seen.setdefault(query.text, None)
        for texts in sp.pairs.values():
            for text in texts:
                seen.setdefault(text, None)
        for item in sp.items.values():
            for text in [*item.captions, item.attribute]:
                if text:
                    seen.setdefault(text, None)
    return list(seen)


def create_tiny_clip(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    embed_dim: int = 64,
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 128,
    vision_layers: int = 3,
    text_width: int = 128,
    text_layers: int = 2,
    heads: int = 4,
    context_length: int = 48,
) -> Path:
    """Write a random CLIPModel with an offline-trained tokenizer and a CLIPImageProcessor config.

    Args:
        out_dir: directory to write (created; existing files are overwritten).
        texts: texts to train the tokenizer's vocabulary on (default: built-in English and
            traffic words). Lowercased, punctuation split ("A white SUV." -> a / white / suv / .).
        embed_dim: joint embedding dimension (projection_dim).
        seed: weight initialisation seed (the global RNG is left untouched).
        image_size: input resolution; the processor resizes the short side to it and centre-crops.

    Returns:
        The output directory.
    """
    from transformers import CLIPConfig, CLIPModel

    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(texts, model_max_length=context_length)
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "max_position_embeddings": context_length,
            # The text tower pools at the first eos_token_id (any id but 2, which transformers
            # treats as "legacy: pool at the highest id").
            "pad_token_id": vocab[PAD],
            "bos_token_id": vocab[BOS],
            "eos_token_id": vocab[EOS],
            "projection_dim": embed_dim,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": 4 * vision_width,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch_size,
            "projection_dim": embed_dim,
        },
        projection_dim=embed_dim,
    )
    model = _seeded_init(seed, lambda: CLIPModel(config))
    preprocess = ImagePreprocess(
        mode="shortest_edge",
        size=image_size,
        crop_size=(image_size, image_size),
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
    )
    with write_failures_named(out):  # a full disk: one line, not safetensors' traceback
        with quiet_transformers():
            model.save_pretrained(out)
        save_tokenizer(tokenizer, out)
        _write_json(out / "preprocessor_config.json", preprocess.to_hf_config("CLIPImageProcessor"))
    return out


def create_tiny_chinese_clip(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    embed_dim: int = 32,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    context_length: int = 32,
) -> Path:
    """A random ChineseCLIPModel (BERT text tower) with a BertTokenizerFast built from a small
    vocab file (characters of ``texts`` plus BERT's special tokens) and its image processor."""
    from transformers import AutoTokenizer, ChineseCLIPConfig, ChineseCLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars: set[str] = set("abcdefghijklmnopqrstuvwxyz0123456789.,!?")
    words: set[str] = set()
    for text in texts if texts is not None else ["一辆白色的轿车", "a white suv", "红色卡车在路上"]:
        for token in text.lower().split():
            if token.isascii():
                words.add(token)
            chars.update(ch for ch in token if not ch.isascii())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars), *sorted(words - chars)]
    vocab += [f"##{ch}" for ch in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # The layout of the published Chinese-CLIP repos: vocab.txt + a BertTokenizer config; loading
    # it through AutoTokenizer builds the fast tokenizer (and save_pretrained adds tokenizer.json).
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "model_max_length": context_length,
        },
    )
    (out / "tokenizer.json").unlink(missing_ok=True)  # a stale one would take precedence
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = ChineseCLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": context_length,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch_size,
            "projection_dim": embed_dim,
        },
        projection_dim=embed_dim,
    )
    model = _seeded_init(seed, lambda: ChineseCLIPModel(config))
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    preprocess = ImagePreprocess(
        mode="shortest_edge", size=image_size, crop_size=(image_size, image_size)
    )
    _write_json(
        out / "preprocessor_config.json", preprocess.to_hf_config("ChineseCLIPImageProcessor")
    )
    return out


def _siglip_towers(vocab: dict[str, int], width: int, layers: int, heads: int, context_length: int):
    """The text config and the vision config's shared part of a tiny SigLIP / SigLIP2."""
    tower = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }
    text = {
        **tower,
        "vocab_size": len(vocab),
        "max_position_embeddings": context_length,
        "pad_token_id": vocab[PAD],
        "eos_token_id": vocab[EOS],
        "bos_token_id": vocab[BOS],
    }
    return text, tower


def _save_tiny(out: Path, model: Any, tokenizer: Any, preprocess: Any, processor: str) -> Path:
    with quiet_transformers():
        model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    _write_json(out / "preprocessor_config.json", preprocess.to_hf_config(processor))
    return out


def create_tiny_siglip(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    context_length: int = 16,
) -> Path:
    """A random SiglipModel with a tokenizer.json-based fast tokenizer (eos appended, padded to
    ``context_length``, as SigLIP expects) and a SiglipImageProcessor config (plain square
    resize, mean/std 0.5)."""
    from transformers import SiglipConfig, SiglipModel

    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(texts, model_max_length=context_length, bos=False, eos=True)
    text, tower = _siglip_towers(tokenizer.get_vocab(), width, layers, heads, context_length)
    vision = {**tower, "image_size": image_size, "patch_size": patch_size}
    config = SiglipConfig(text_config=text, vision_config=vision)
    model = _seeded_init(seed, lambda: SiglipModel(config))
    preprocess = ImagePreprocess(
        mode="resize", size=(image_size, image_size), crop_size=None, mean=HALF, std=HALF
    )
    return _save_tiny(out, model, tokenizer, preprocess, "SiglipImageProcessor")


def create_tiny_siglip2(
    out_dir: str | os.PathLike,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    patch_size: int = 8,
    max_num_patches: int = 16,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    context_length: int = 16,
) -> Path:
    """A random Siglip2Model (NaFlex: variable resolution, at most ``max_num_patches`` patches)
    with an offline tokenizer and a Siglip2ImageProcessor config."""
    from transformers import Siglip2Config, Siglip2Model

    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(texts, model_max_length=context_length, bos=False, eos=True)
    text, tower = _siglip_towers(tokenizer.get_vocab(), width, layers, heads, context_length)
    vision = {**tower, "patch_size": patch_size, "num_patches": max_num_patches}
    config = Siglip2Config(text_config=text, vision_config=vision)
    model = _seeded_init(seed, lambda: Siglip2Model(config))
    preprocess = ImagePreprocess(
        mode="naflex",
        size=0,
        crop_size=None,
        resample="bilinear",
        mean=HALF,
        std=HALF,
        patch_size=patch_size,
        max_num_patches=max_num_patches,
    )
    return _save_tiny(out, model, tokenizer, preprocess, "Siglip2ImageProcessor")


def create_tiny_blip(
    out_dir: str | os.PathLike,
    family: str = "blip2",
    texts: Iterable[str] | None = None,
    embed_dim: int = 16,
    seed: int = 0,
    image_size: int = 32,
    num_query_tokens: int = 4,
    text_init_range: float = 0.2,
) -> Path:
    """A random ``BlipForImageTextRetrieval`` (``family="blip"``) or
    ``Blip2ForImageTextRetrieval`` (``"blip2"``, ``num_query_tokens`` query tokens) with a BERT
    WordPiece tokenizer (characters plus the words of ``texts``) and its processor files.

    One directory serves both roles: ``create_encoder("hf:OUT")`` (the ITC bi-encoder) and
    ``create_cross_encoder("blip2:OUT")`` (the ITM head), as a published checkpoint does.
    ``text_init_range`` (default 0.2, not BERT's 0.02) keeps the random text tower's CLS apart
    for different texts, so that a few training steps can move it.
    """
    from xmr.models.blip_itm import create_tiny_cross_encoder

    out = check_output_dir(out_dir)
    words = sorted({w for text in texts or () for w in text.lower().split() if w.isalnum()})
    with write_failures_named(out):
        return create_tiny_cross_encoder(
            out,
            "blip" if family == "blip" else "blip2",
            image_size=image_size,
            seed=seed,
            words=words,
            embed_dim=embed_dim,
            num_query_tokens=num_query_tokens,
            text_init_range=text_init_range,
        )
