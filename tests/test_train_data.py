"""Training examples, relevance groups and the deterministic batch plan (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from xmr.data.dataset import Item, Query, Split
from xmr.data.images import ImageRef
from xmr.errors import XmrError
from xmr.train.data import BatchPlan, example_keys, training_examples


def _split() -> Split:
    split = Split("train")
    img = ImageRef(data=b"x")
    split.items = {
        "a": Item("a", img, attribute="A white SUV."),
        "b": Item("b", img, attribute="A white SUV."),
        "c": Item("c", img, captions=["a red bus", "a bus painted red"]),
        "d": Item("d", img, captions=["a bus painted red", "a red bus"]),
        "e": Item("e", img),  # text only through the relevance
        "f": Item("f", None, captions=["no image"]),
        "g": Item("g", img),  # no text at all
    }
    split.pairs = {
        "a": ["This is a white SUV."],
        "b": ["A white SUV.", "A white sport utility vehicle."],
    }
    split.queries = {"q1": Query("q1", "a blue van")}
    split.relevance = {"q1": {"e"}}
    return split


def test_examples_texts_and_groups():
    examples = {e.item_id: e for e in training_examples(_split())}
    assert sorted(examples) == ["a", "b", "c", "d", "e"]  # f has no image, g no text
    assert examples["b"].texts == ["A white SUV.", "A white sport utility vehicle."]
    assert examples["e"].texts == ["a blue van"]
    assert examples["a"].group == examples["b"].group == "attr:A white SUV."
    # Same texts in another order: one group (an export listing every relevant text per image).
    assert examples["c"].group == examples["d"].group != examples["e"].group
    ka = example_keys(examples["a"], "This is a white SUV.")
    kb = example_keys(examples["b"], "A white SUV.")
    assert ka[0] == kb[0] and ka[1] != kb[1] and ka[2] != kb[2]
    assert len(training_examples(_split(), max_items=2)) == 2
    split = _split()
    split.items["a"].captions = ["white suv caption"]
    assert [e.texts for e in training_examples(split, text_source="captions")][:1] == [
        ["white suv caption"]
    ]
    both = {e.item_id: e.texts for e in training_examples(split, text_source="both")}
    assert both["a"] == ["This is a white SUV.", "white suv caption"]
    pairs_only = {e.item_id for e in training_examples(split, text_source="pairs")}
    assert pairs_only == {"a", "b"}
    with pytest.raises(XmrError, match="text source"):
        training_examples(split, text_source="titles")
    empty = Split("train", items={"x": Item("x", None)})
    with pytest.raises(XmrError, match="no training pairs"):
        training_examples(empty)


def test_plan_is_deterministic_and_splits_ranks_like_one_big_batch():
    n_texts = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    one = BatchPlan(n_texts, micro_batch=4, world_size=1, accum_steps=1, seed=7)
    two = BatchPlan(n_texts, micro_batch=2, world_size=2, accum_steps=1, seed=7)
    acc = BatchPlan(n_texts, micro_batch=2, world_size=1, accum_steps=2, seed=7)
    assert one.steps_per_epoch == two.steps_per_epoch == acc.steps_per_epoch == 3  # 13 // 4
    for epoch in range(3):
        for step in range(3):
            (whole,) = one.micro_batches(epoch, step, 0)
            ranks = [two.micro_batches(epoch, step, r)[0] for r in range(2)]
            assert ranks[0] + ranks[1] == whole
            assert sum(acc.micro_batches(epoch, step, 0), []) == whole
            for ex, t in whole:
                assert 0 <= t < n_texts[ex]
    again = BatchPlan(n_texts, micro_batch=4, world_size=1, accum_steps=1, seed=7)
    assert again.micro_batches(1, 2, 0) == one.micro_batches(1, 2, 0)
    # Every epoch visits distinct examples; orders and text choices change between epochs.
    orders = [
        np.concatenate([[i for i, _ in one.micro_batches(e, s, 0)[0]] for s in range(3)])
        for e in range(4)
    ]
    assert all(len(set(o.tolist())) == 12 for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    choices = {tuple(one.epoch_order(e)[1]) for e in range(6)}
    assert len(choices) > 1
    positions = list(one.positions(1, 2, 3))
    assert positions == [(1, 2), (2, 0), (2, 1), (2, 2)]
    with pytest.raises(XmrError, match="lower batch_size"):
        BatchPlan([1] * 5, micro_batch=4, world_size=2, accum_steps=1, seed=0)


def test_cosine_schedule_with_warmup():
    from xmr.train.model import cosine_schedule

    f = cosine_schedule(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert [round(f(s), 6) for s in range(3)] == [0.1, 0.2, 0.3]
    assert f(9) == 1.0 and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from xmr.train import checkpoint as ckpt

    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.atomic_torch_save({"step": 1}, path)
    assert torch.load(path)["step"] == 1

    def failing_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    with pytest.raises(XmrError, match="not an xmr training checkpoint"):
        ckpt.load_checkpoint(path)
