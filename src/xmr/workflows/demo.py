"""``xmr demo``: the whole offline path on generated traffic data, with real numbers.

1. generate a synthetic Track2-layout data set (``xmr.data.synth``);
2. create a tiny random CLIP whose tokenizer is built from the training texts;
3. score it zero-shot on the test split (encode -> exact index -> search -> Track2 metrics);
4. train it from scratch with ``xmr.train`` (validation on the valid split picks the best epoch);
5. encode the test split with the trained model and build the search index ``OUT/index``;
6. score the trained model the same way as in 3, print both side by side and a few searches.

The last line printed is a JSON object with the metrics, so scripts can read it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xmr.data.readers import load_dataset
from xmr.data.synth import generate_synthetic
from xmr.encode import encode_split, load_embeddings
from xmr.eval.evaluate import evaluate_rankings, split_categories
from xmr.models import create_encoder
from xmr.search import Searcher

# The numbers reported side by side (Track2 scores mAP@10; recall shows where the first hit is).
REPORTED = ("t2i/mAP@10", "t2i/R@1", "t2i/R@5", "t2i/R@10", "t2i/MeanRecall")
TARGET_METRIC = "t2i/mAP@10"


@dataclass
class DemoConfig:
    """Sizes of the demo. The defaults reach t2i/mAP@10 >= 0.9 on the test split in a few
    minutes on 2 CPU cores; ``smoke()`` is a seconds-long version for tests."""

    n_train: int = 2000
    n_valid: int = 200
    n_test: int = 500
    image_size: int = 32
    n_attribute_sets: int = 40
    seed: int = 0
    # the tiny CLIP
    embed_dim: int = 64
    patch_size: int = 8
    width: int = 128
    vision_layers: int = 3
    text_layers: int = 2
    heads: int = 4
    context_length: int = 48
    # training
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    workers: int = 0
    train_overrides: dict[str, Any] = field(default_factory=dict)
    examples: int = 3

    @classmethod
    def smoke(cls) -> DemoConfig:
        return cls(
            n_train=96,
            n_valid=32,
            n_test=48,
            image_size=16,
            n_attribute_sets=4,
            embed_dim=16,
            width=32,
            vision_layers=1,
            text_layers=1,
            heads=2,
            context_length=32,
            epochs=6,
            batch_size=32,
            lr=3e-3,
            examples=1,
        )


def _out(message: str = "") -> None:
    print(message, flush=True)


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k.split('/', 1)[1]} {metrics[k]:.3f}" for k in REPORTED if k in metrics)


def _encode_and_index(
    model_spec: str, split, emb_dir: Path, index_dir: Path | None, cfg: DemoConfig
):
    """Encode the split with the model, build an exact index, search every query; returns
    (metrics, index)."""
    from xmr.workflows.index_build import index_embeddings

    encoder = create_encoder(model_spec, device="cpu")
    encode_split(
        encoder,
        split,
        emb_dir,
        batch_size=256,
        workers=cfg.workers,
        overwrite=True,
        progress=False,
        source={"path": "demo", "format": "track2", "split": split.name},
    )
    index = index_embeddings(emb_dir, index_dir, "Flat")
    queries = load_embeddings(emb_dir, "texts")
    hits = index.search(queries.vectors, 10)
    rankings = {qid: [h.id for h in row] for qid, row in zip(queries.ids, hits, strict=True)}
    metrics = evaluate_rankings(
        rankings, split.relevance, direction="t2i", categories=split_categories(split, "t2i")
    )
    return metrics, index


def create_demo_clip(path: Path, texts: list[str], cfg: DemoConfig) -> Path:
    """The demo's tiny random CLIP (sizes from ``cfg``), its tokenizer built from ``texts``."""
    from xmr.models import create_tiny_clip

    return create_tiny_clip(
        path,
        texts=texts,
        embed_dim=cfg.embed_dim,
        seed=cfg.seed,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_width=cfg.width,
        vision_layers=cfg.vision_layers,
        text_width=cfg.width,
        text_layers=cfg.text_layers,
        heads=cfg.heads,
        context_length=cfg.context_length,
    )


def demo_train_config(cfg: DemoConfig, model: str, data: Path, out: Path, data_format: str):
    """The demo's :class:`~xmr.train.TrainConfig`: train split, best epoch on valid, on the
    CPU, no resume (a demo starts afresh), with ``cfg.train_overrides`` applied last."""
    from xmr.train import TrainConfig

    train_cfg = TrainConfig(
        model=model,
        data=str(data),
        out=str(out),
        format=data_format,
        split="train",
        valid_split="valid",
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        workers=cfg.workers,
        device="cpu",
        seed=cfg.seed,
        resume=False,
        tensorboard=False,
        log_every=10,
    )
    if cfg.train_overrides:
        train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), **cfg.train_overrides})
    return train_cfg


def run_demo(
    out: str | os.PathLike = "demo_out", config: DemoConfig | None = None
) -> dict[str, Any]:
    """Run the demo into ``out`` and return the final metrics (also printed as the last line)."""
    from xmr.train import train

    cfg = config or DemoConfig()
    out = Path(out)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    def elapsed() -> str:
        return f"{time.perf_counter() - start:.0f}s"

    _out(f"[1/6] generating synthetic traffic data in {out / 'data'}")
    data = generate_synthetic(
        out / "data",
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        n_valid=cfg.n_valid,
        image_size=cfg.image_size,
        seed=cfg.seed,
        n_attribute_sets=cfg.n_attribute_sets,
    )
    train_split = load_dataset(data, "track2", split="train").split("train")
    test_split = load_dataset(data, "track2", split="test").split("test")
    texts = [t for ts in train_split.pairs.values() for t in ts]
    _out(
        f"      {cfg.n_train} train / {cfg.n_valid} valid / {cfg.n_test} test images of "
        f"{cfg.n_attribute_sets} attribute sets (vehicles and pedestrians), "
        f"{len(test_split.queries)} test queries [{elapsed()}]"
    )

    tiny = out / "tiny_model"
    _out(f"[2/6] creating a tiny random CLIP in {tiny} (tokenizer built from the training texts)")
    create_demo_clip(tiny, texts, cfg)

    _out("[3/6] zero-shot retrieval on the test split (random weights)")
    zero_shot, _ = _encode_and_index(
        f"hf:{tiny}", test_split, out / "zero_shot_embeddings", None, cfg
    )
    _out(f"      {_fmt(zero_shot)} [{elapsed()}]")

    model_dir = out / "model"
    _out(f"[4/6] training from scratch -> {model_dir}")
    shutil.rmtree(model_dir, ignore_errors=True)  # an earlier demo's model: start afresh
    train_cfg = demo_train_config(cfg, f"hf:{tiny}", data, model_dir, "track2")
    result = train(train_cfg)
    _out(
        f"      best valid {result.best_metric} {result.best_value:.3f} at step "
        f"{result.best_step}/{result.total_steps}, {result.samples_per_s:.0f} samples/s [{elapsed()}]"
    )

    index_dir = out / "index"
    _out(f"[5/6] encoding the test split with the trained model and building {index_dir}")
    trained, _ = _encode_and_index(
        f"hf:{model_dir}", test_split, out / "embeddings", index_dir, cfg
    )

    _out("[6/6] test split, text -> image (Track2 scores mAP@10):")
    _out(f"      {'metric':<16}{'zero-shot':>10}{'trained':>10}")
    for key in REPORTED:
        _out(f"      {key:<16}{zero_shot[key]:>10.3f}{trained[key]:>10.3f}")
    _show_examples(index_dir, test_split, cfg.examples)

    _out("")
    _out("serve the demo index (search page at http://127.0.0.1:8000/):")
    _out(f"  xmr serve {index_dir}")
    summary = {
        "zero_shot": {k: zero_shot[k] for k in REPORTED},
        "trained": {k: trained[k] for k in REPORTED},
        "target": {TARGET_METRIC: 0.9},
        "passed": trained[TARGET_METRIC] >= 0.9,
        "best_valid": {result.best_metric: result.best_value, "step": result.best_step},
        "seconds": round(time.perf_counter() - start, 1),
        "index": str(index_dir),
        "model": str(model_dir),
        "config": asdict(cfg),
    }
    print(json.dumps(summary), flush=True)
    return summary


def _show_examples(index_dir: Path, split, n: int) -> None:
    """A few text searches (one per category when possible) and one search by image."""

    if n <= 0:
        return
    searcher = Searcher.from_index_dir(index_dir, device="cpu")
    by_category: dict[str, list[str]] = {}
    for qid, query in split.queries.items():
        if split.relevance.get(qid):
            by_category.setdefault(query.category or "", []).append(qid)
    picks: list[str] = []
    while len(picks) < n and any(by_category.values()):
        for qids in by_category.values():
            if qids and len(picks) < n:
                picks.append(qids.pop(0))
    for qid in picks:
        query = split.queries[qid]
        relevant = split.relevance[qid]
        results = searcher.search_text(query.text, k=5)
        marks = "".join("+" if r.id in relevant else "-" for r in results)
        _out(f"  search {query.text!r}: top 5 [{marks}] ({len(relevant)} relevant)")
        for r in results[:3]:
            texts = split.pairs.get(r.id) or r.captions or [r.attribute or ""]
            _out(
                f"      {r.score:.3f} {r.id:<22} {'+' if r.id in relevant else '-'} {texts[0][:80]}"
            )
    # Search by image: one example, and how often the 5 nearest images share the query's
    # attribute over the whole split (image-image similarity is not trained directly).
    item_id = next(iter(split.items))
    item = split.items[item_id]
    results = searcher.search_image(item.image, k=6)
    same = [r.id for r in results if r.id != item_id][:5]
    hits = sum(split.items[i].attribute == item.attribute for i in same if i in split.items)
    label = (split.pairs.get(item_id) or [item.attribute or ""])[0]
    _out(f"  search by the image {item_id} ({label[:60]}): {hits}/5 nearest images show the same")
    precision = _image_neighbour_precision(searcher, split)
    if precision is not None:
        _out(
            f"  over all {len(split.items)} test images: {precision:.0%} of the 5 nearest show the same"
        )


def _image_neighbour_precision(searcher, split, k: int = 5) -> float | None:
    import numpy as np

    ids = [i for i in split.items if i in searcher.index]
    if len(ids) <= k:
        return None
    vectors = np.stack([searcher.index.vector(i) for i in ids])
    rows = searcher.index.search(vectors, k + 1)
    same = [
        split.items[h.id].attribute == split.items[q].attribute
        for q, row in zip(ids, rows, strict=True)
        for h in [h for h in row if h.id != q][:k]
    ]
    return float(np.mean(same))
