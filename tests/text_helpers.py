"""Seed 003's MUGE example (evalscope's image_caption output): ten captions as the corpus and
the ten MUGE queries, query i relevant to document i (ids equal: the ignore_identical_ids case),
and a small English caption corpus with graded qrels."""

from __future__ import annotations

import json
from pathlib import Path

SEED_DOCS = [
    "这是一张展示澳亚奇品牌的产品广告图片，图片中包含了六罐澳亚奇品牌的饮料，饮料罐上印有品牌的名称和图案。饮料罐排列在纸箱上，纸箱上也有品牌名称和图案。整个包装以红色和黄色为主基调，给人以醒目和吸引人的感觉。",
    "这是一副时尚的眼镜，镜框是金属材质的，颜色为玫瑰金色，镜腿部分是黑色的。镜腿的内侧有品牌标志，看起来像是“The Row”。这款眼镜的设计比较现代，适合日常佩戴。",
    "这张图片展示了一位女性，她正在用手机拍摄自己的侧脸自拍。她有长长的棕色头发，并佩戴着一对精美的耳环。耳环的设计有点像是字母“A”。背景是室内环境，可以看到淡蓝色墙壁和浅色的柜子。",
    "这是一张黑色塑料瓶的图片，瓶身上贴有红色标签，标签上有白色和黄色的文字。标签上内容包括产品名称、品牌和一些图案。瓶口是红色和灰色的盖子。",
    "这是一张客厅的照片，里面有一把单人沙发椅。沙发的靠背和坐垫上有黑白相间的斑马纹图案，椅子的框架是黑色的木制结构，带有卷曲的扶手。沙发的腿部是黑色的，造型优雅。沙发布置在一个铺有地毯的地板上，背景中可以看到部分沙发和装饰画，整个房间的装饰风格显得温馨且现代。",
    "这是一张一次性纸杯的图片。纸杯呈圆柱形，杯壁较为光滑，没有明显的装饰或花纹。杯口部分略微向外扩展，便于抓握。杯子整体呈浅灰色或乳白色，质地看起来较为轻薄。这种纸杯常用于盛装饮料或冷食，适合一次性使用。",
    "这张图片展示的是四个卡通人物，背景有五彩斑斓的光芒。从左到右，这四个角色分别是：\n\n1. 一个穿着蓝色服装、戴着紫色头巾和发饰的角色。\n2. 一个穿着蓝绿色服装、戴着蓝色发饰和翅膀的角色。\n3. 一个穿着粉红色服装、带着红色头饰和翅膀的角色。\n4. 一个穿着红色和白色服装、戴着红色头饰的角色。\n\n背景中，有“新格林童话”和“NEW GREEN”的字样。",
    "这是一张展示手中握着蓝色葡萄的照片。手的主人穿着绿色的毛衣，手指修长。葡萄颜色深蓝，表面光滑，每颗葡萄看起来都十分饱满多汁。旁边有一些绿色叶子和干燥的枝条做装饰。背景是一张木质的桌子，整体画面给人一种自然清新的感觉。",
    "这张图片展示了一个可爱的小马克杯，杯身是浅绿色，配有圆弧形的手柄。杯子上绘有可爱的卡通图案，包括一只戴着耳机的小兔子，并配有“热爱学习”字样，旁边还有两只小耳朵和几颗星星。整个马克杯的设计简洁可爱，适合用作日常饮品盛器。",
    "这是一张展示塑料包装中大量线状物体的图片。这些线状物体堆叠在一起，看起来像是一些纤维或麻线，可能是用于编织或加工的。",
]
SEED_QUERIES = [
    "酸角汁饮料 整箱 云南",
    "达芬奇眼镜",
    "水钻蝴蝶结耳钉",
    "邓州黄酒",
    "斑马纹老虎椅",
    "布丁杯模具",
    "光之美少女盒蛋",
    "蓝莓模型",
    "少女心喝水杯",
    "炸面",
]

ENGLISH_DOCS = {
    "d0": "A white SUV parked on the street.",
    "d1": "A red sports car driving fast on a highway.",
    "d2": "A black cat sleeping on a mat.",
    "d3": "A white cat and a black dog playing on the grass.",
    "d4": "Green velvet cushion with white embroidery, festive design.",
    "d5": "Red Christmas pillow with Santa and reindeer design.",
    "d6": "Christmas table runner with snowman and trees.",
    "d7": "A blue phone case with moon and clouds.",
}
ENGLISH_QUERIES = {
    "q0": "white car",
    "q1": "black cat",
    "q2": "Christmas pillow",
    "q3": "phone case clay",
    "q4": "zebra chair",  # shares no token with any document
}
ENGLISH_QRELS = {
    "q0": {"d0": 2, "d1": 1},
    "q1": {"d2": 2, "d3": 1},
    "q2": {"d5": 2, "d4": 1, "d6": 1},
    "q3": {"d7": 1},
    "q4": {"d2": 1},
}


def write_beir(
    root: Path, docs: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]]
) -> Path:
    """A BEIR directory (corpus.jsonl, queries.jsonl, qrels/test.tsv) as evalscope writes it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, text in docs.items():
            f.write(json.dumps({"_id": did, "text": text}, ensure_ascii=False) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{r}" for q, rels in qrels.items() for d, r in rels.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def english_beir(root: Path) -> Path:
    return write_beir(root, ENGLISH_DOCS, ENGLISH_QUERIES, ENGLISH_QRELS)


def seed_muge_beir(root: Path) -> Path:
    docs = {str(i): t for i, t in enumerate(SEED_DOCS)}
    queries = {str(i): t for i, t in enumerate(SEED_QUERIES)}
    return write_beir(root, docs, queries, {str(i): {str(i): 1} for i in range(len(docs))})


TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "query", ":", "passage",
    "a", "white", "red", "black", "blue", "green", "car", "suv", "cat", "dog", "on", "the",
    "mat", "fast", "christmas", "pillow", "phone", "case",
]  # fmt: skip


def _tiny_bert(directory: Path, *, labels: int | None = None) -> Path:
    """A tiny random BERT (and its WordPiece tokenizer) saved with save_pretrained."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        BertTokenizerFast,
    )

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    if labels is None:
        model = BertModel(config)
    else:
        config.num_labels = labels
        model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_sentence_transformer(directory: Path, *, prompts: dict[str, str] | None = None) -> Path:
    """A tiny random sentence-transformers bi-encoder (BertModel + mean Pooling + Normalize)
    written by SentenceTransformer.save: modules.json, config_sentence_transformers.json..."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules

    bert = _tiny_bert(directory.parent / f"{directory.name}-bert")
    transformer = modules.Transformer(str(bert))
    pooling = modules.Pooling(16, "mean")  # the tiny BERT's hidden size
    model = SentenceTransformer(
        modules=[transformer, pooling, modules.Normalize()], prompts=prompts
    )
    model.save(str(directory))
    return directory


def tiny_cross_encoder(directory: Path) -> Path:
    """A tiny random one-label BERT cross-encoder, the layout sentence-transformers loads."""
    return _tiny_bert(directory, labels=1)
