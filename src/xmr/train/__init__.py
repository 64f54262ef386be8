"""Every trainer: contrastive fine-tuning of two-tower (CLIP-family) models
(``train(TrainConfig)``), learned fusion of item images and captions (``train_fusion``,
``train_fusion_on_dataset``) and ITM fine-tuning of cross-encoders (``train_itm``,
``train_itm_on_dataset``).

They share one configuration base (``TrainerConfig``: typed dataclasses, one coercer, JSON
beside the weights), one result type (``TrainResult``) and one evaluator interface
(``Evaluator``: ``primary_metric``, ``greater_is_better``); each step is a function or object
of its own (``ContrastiveStep``, ``fusion_step``, ``itm_step``), apart from its loop. Files::

    config_base.py   TrainerConfig, the coercer, key=value overrides, config files
    config.py        TrainConfig (contrastive) and load_config
    result.py        TrainResult
    validate.py      Evaluator, RetrievalEvaluator (bi-encoders), best-metric checks
    setup.py         a contrastive run set up (data, model, optimiser, resume)
    contrastive_step.py, feed.py, loop.py, interrupt.py, outputs.py, checkpoint.py
                     the contrastive step, its batches, the loop, Ctrl-C, outputs, checkpoints
    data.py, model.py, losses.py, distributed.py, logs.py, optim.py
                     examples and batch plans, the module, losses, DDP, logs, the update
    fusion.py, fusion_data.py, fusion_step.py   learned fusion
    itm.py, itm_data.py            cross-encoder (ITM) training

Behind the ``[train]`` extra: importing ``xmr.train`` is light; torch loads with a trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainerConfig": "xmr.train.config_base",
    "TrainConfig": "xmr.train.config",
    "load_config": "xmr.train.config",
    "parse_overrides": "xmr.train.config_base",
    "train": "xmr.train.loop",
    "TrainResult": "xmr.train.result",
    "export_model": "xmr.train.outputs",
    "Evaluator": "xmr.train.validate",
    "RetrievalEvaluator": "xmr.train.validate",
    "FusionTrainConfig": "xmr.train.fusion",
    "FusionData": "xmr.train.fusion_data",
    "fusion_step": "xmr.train.fusion_step",
    "FusionEvaluator": "xmr.train.fusion_data",
    "train_fusion": "xmr.train.fusion",
    "train_fusion_on_dataset": "xmr.train.fusion",
    "ItmTrainConfig": "xmr.train.itm",
    "RerankEvaluator": "xmr.train.itm",
    "train_itm": "xmr.train.itm",
    "train_itm_on_dataset": "xmr.train.itm",
    "ClipLoss": "xmr.train.losses",
    "SigLipLoss": "xmr.train.losses",
    "create_loss": "xmr.train.losses",
    "register_loss": "xmr.train.losses",
    "positive_mask": "xmr.train.losses",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xmr.train' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
