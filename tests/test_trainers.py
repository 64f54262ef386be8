"""What the three trainers share: one config base and coercer, one result type, one evaluator
interface (each trainer selects by the evaluator's metric and direction), and the library
functions behind ``xmr train --fused`` / ``--cross-encoder`` (the ITM validation included)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmr.errors import XmrError
from xmr.train.config import TrainConfig
from xmr.train.config_base import TrainerConfig
from xmr.train.fusion import FusionTrainConfig
from xmr.train.validate import Evaluator, RetrievalEvaluator

torch = pytest.importorskip("torch")

from xmr.train.itm import ItmTrainConfig  # noqa: E402

CONFIGS = (TrainConfig, FusionTrainConfig, ItmTrainConfig)


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_config_shares_the_base_and_round_trips_through_json(cls):
    assert issubclass(cls, TrainerConfig)
    config = cls()
    back = cls.from_dict(json.loads(config.to_json()))
    assert back == config
    with pytest.raises(XmrError, match=rf"unknown {cls.KIND} option 'sed' \(did you mean 'seed'"):
        cls.from_dict({"sed": 1})
    with pytest.raises(XmrError, match=r"seed='x' is not a number"):
        cls.from_dict({"seed": "x"})
    with pytest.raises(XmrError, match=r"seed=2.5 is not a whole number"):
        cls.from_dict({"seed": 2.5})
    with pytest.raises(XmrError, match="'seed' cannot be null"):
        cls.from_dict({"seed": None})


def test_the_one_coercer_converts_text_to_each_fields_type():
    itm = ItmTrainConfig.from_dict({"grad_clip": "none", "epochs": "0.5", "steps": "3.0"})
    assert itm.grad_clip is None and itm.epochs == 0.5 and itm.steps == 3
    train = TrainConfig.from_dict(
        {"grad_clip": "null", "betas": "0.8,0.9", "freeze_text": "yes", "best_metric": None}
    )
    assert train.grad_clip is None and train.betas == (0.8, 0.9) and train.freeze_text is True
    # A text field keeps "none" as text (a split or a file may be called that).
    assert TrainConfig.from_dict({"format": "none"}).format == "none"
    # YAML reads `yes` as a boolean; a text field gets the word back.
    assert TrainConfig.from_dict({"cache_images": True}).cache_images == "yes"
    with pytest.raises(XmrError, match="freeze_text='maybe' is not true/false"):
        TrainConfig.from_dict({"freeze_text": "maybe"})
    with pytest.raises(XmrError, match="ITM training needs steps >= 1"):
        ItmTrainConfig(steps=0).validate()


def test_itm_config_is_saved_beside_the_weights_and_read_back(tmp_path):
    config = ItmTrainConfig(steps=7, lr=1e-4, grad_clip=None)
    path = config.save(tmp_path, data={"config": config.to_dict(), "steps": 7})
    assert path.name == "itm_train.json"
    assert ItmTrainConfig.from_dict(json.loads(path.read_text())["config"]) == config


class _Scripted(Evaluator):
    """Returns the given values in turn under ``primary_metric`` "score"."""

    def __init__(self, values, greater_is_better):
        self.values = list(values)
        self.primary_metric = "score"
        self.greater_is_better = greater_is_better
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return {"score": self.values.pop(0), "other": 1.0}


def test_evaluator_direction_nan_and_missing_primary():
    lower = _Scripted([], greater_is_better=False)
    assert lower.is_better(0.1, 0.2) and not lower.is_better(0.3, 0.2)
    assert lower.is_better(5.0, None) and not lower.is_better(float("nan"), None)
    higher = _Scripted([], greater_is_better=True)
    assert higher.is_better(0.3, 0.2) and not higher.is_better(0.2, 0.2)
    with pytest.raises(XmrError, match="primary metric 'score' is not a metric .*known: other"):
        higher.primary({"other": 1.0})


def test_retrieval_evaluator_takes_its_direction_from_the_metric():
    class _Split:
        has_relevance = True
        name = "valid"

    assert RetrievalEvaluator(_Split(), primary_metric="t2i/R@1").greater_is_better
    assert not RetrievalEvaluator(_Split(), primary_metric="i2t/MeanRank").greater_is_better


@pytest.mark.parametrize(("greater", "best_epoch"), [(False, 3), (True, 2)])
def test_fusion_training_selects_by_the_evaluators_direction(greater, best_epoch):
    from test_fusion_learned import synthetic
    from xmr.train.fusion import train_fusion

    judge = _Scripted([0.5, 0.2, 0.9, 0.1], greater_is_better=greater)
    config = FusionTrainConfig(epochs=3, batch_size=32, negatives=16)
    result = train_fusion(synthetic(0, n=64), config=config, valid=judge)
    assert judge.calls == 4  # the starting weighted sum, then every epoch
    assert result.trainer == "fusion" and result.best_metric == "score"
    assert result.details["best_epoch"] == best_epoch and result.baseline == 0.5
    assert result.best_value == (0.1 if not greater else 0.9)
    assert [h["score"] for h in result.history] == [0.5, 0.2, 0.9, 0.1]
    assert result.metrics == {"score": 0.1, "other": 1.0}  # the last validation
    assert len(result.losses) == 3 and result.first_loss == result.losses[0]
    steps = result.history[1]["step"]
    assert result.global_step == result.total_steps == 3 * steps
    assert result.best_step == best_epoch * steps


@pytest.fixture(scope="module")
def color_data(tmp_path_factory, tiny_clip):
    pytest.importorskip("transformers")
    from test_cross_encoders import _color_tianchi
    from xmr.models.blip_itm import create_tiny_cross_encoder

    root = tmp_path_factory.mktemp("trainers")
    data = _color_tianchi(root / "data")
    start = create_tiny_cross_encoder(root / "start", "blip", words=["red", "blue", "thing"])
    return {"data": data, "ce": str(start), "clip": f"hf:{tiny_clip}"}


def test_itm_validation_is_the_librarys_and_equals_evaluate_reranked(color_data, tmp_path):
    from xmr.data.readers import load_dataset
    from xmr.eval.reranked import evaluate_reranked
    from xmr.models import create_encoder
    from xmr.models.cross_encoders import create_cross_encoder
    from xmr.train.itm import train_itm_on_dataset

    out = tmp_path / "itm"
    result = train_itm_on_dataset(
        color_data["ce"],
        color_data["data"],
        out,
        first_stage=color_data["clip"],
        rerank_k=3,
        config={"steps": "4", "batch_size": 2},
        device="cpu",
    )
    assert result.trainer == "itm" and result.global_step == 4 and len(result.losses) == 4
    assert result.best_metric == "t2i/MeanRecall" and result.best_step == 4
    assert result.out_dir == out and result.summary["steps"] == 4
    assert set(result.summary["valid"]) >= {"t2i/R@1", "first_stage/t2i/R@1", "t2i/MeanRecall"}
    # The numbers are evaluate_reranked's on the saved model.
    valid = load_dataset(color_data["data"]).split("valid")
    clip = create_encoder(color_data["clip"], device="cpu")
    text_emb = clip.encode_texts([q.text for q in valid.queries.values()])
    image_emb = clip.encode_images([it.image for it in valid.items.values()])
    again = create_cross_encoder(str(out), device="cpu")
    expected = evaluate_reranked(valid, text_emb, image_emb, again, rerank_k=3)
    assert result.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    meta = json.loads((out / "itm_train.json").read_text())
    assert meta["valid"]["t2i/R@1"] == pytest.approx(result.metrics["t2i/R@1"])
    assert ItmTrainConfig.from_dict(meta["config"]).steps == 4


def test_a_missing_validation_split_is_refused_before_any_work(color_data, tmp_path):
    from xmr.train.fusion import train_fusion_on_dataset
    from xmr.train.itm import train_itm_on_dataset

    for run in (
        lambda out: train_fusion_on_dataset("hf:/nonexistent", color_data["data"], out,
                                            valid_split="dev"),
        lambda out: train_itm_on_dataset("blip:/nonexistent", color_data["data"], out,
                                         first_stage="hf:/nonexistent", valid_split="dev"),
    ):  # fmt: skip
        out = tmp_path / "out"
        with pytest.raises(XmrError, match=r"no validation split 'dev' \(splits: train, valid"):
            run(out)
        assert not out.exists()
    with pytest.raises(XmrError, match="'train' is the training split"):
        train_fusion_on_dataset("hf:/x", color_data["data"], tmp_path / "o", valid_split="train")
    with pytest.raises(XmrError, match="ITM training needs steps >= 1"):
        train_itm_on_dataset("blip:/x", color_data["data"], tmp_path / "o", config={"steps": 0})


def test_contrastive_training_selects_by_a_given_evaluator(tmp_path):
    pytest.importorskip("transformers")
    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.models import create_tiny_clip
    from xmr.train import train

    data = generate_synthetic(tmp_path / "data", n_train=16, n_test=0, n_valid=8, image_size=16)
    model = create_tiny_clip(tmp_path / "tiny", embed_dim=8, image_size=16, patch_size=8,
                             vision_width=16, text_width=16, vision_layers=1, text_layers=1,
                             heads=2, context_length=32)  # fmt: skip
    split = load_dataset(data, split="valid").split("valid")

    class LowestMeanRank(RetrievalEvaluator):
        calls = 0

        def __call__(self, encoder):
            type(self).calls += 1
            return super().__call__(encoder)

    judge = LowestMeanRank(split, primary_metric="t2i/MeanRank", batch_size=8)
    cfg = dict(model=f"hf:{model}", data=str(data), out=str(tmp_path / "run"), epochs=1,
               batch_size=4, eval_every=1, workers=0, progress=False, tensorboard=False,
               valid_split=None)  # fmt: skip
    result = train(cfg, evaluator=judge)
    assert LowestMeanRank.calls == result.global_step == 4
    ranks = [h["t2i/MeanRank"] for h in result.history]
    assert result.best_metric == "t2i/MeanRank" and result.best_value == min(ranks)
    assert result.best_step == result.history[int(np.argmin(ranks))]["step"]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["best_metric"] == "t2i/MeanRank"


def test_every_lazy_export_of_xmr_train_resolves():
    import xmr.train

    for name in xmr.train.__all__:
        assert getattr(xmr.train, name) is not None, name
    assert xmr.train.TrainResult is xmr.train.train_itm.__globals__["TrainResult"]
