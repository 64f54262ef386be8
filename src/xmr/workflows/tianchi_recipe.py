"""Seed 001's table as a recipe: text -> image and text -> image+caption, zero-shot and fine-tuned.

Seed 001 (tianchi_multimodal) compares, on e-commerce keyword queries, with R@1/5/10 and
R_mean (the mean of the three, xmr's ``MeanRecall``):

1. image-text, zero-shot: a query ranks the items' images (``xmr evaluate --model M``);
2. text -> (image+text), zero-shot: a query ranks fused image+caption items
   (``xmr evaluate --model M --fused F``);
3. text -> (image+text), fine-tuned on the e-commerce training set
   (``xmr train --model M ...``, then 2. with the trained model).

:func:`run_tianchi_recipe` runs exactly those library calls (the functions behind the commands)
on a data set in the tianchi layout: by default one it generates (``xmr data synth --layout
tianchi``) and the demo's tiny random CLIP built for it (:mod:`xmr.workflows.demo`), so it runs
offline on a CPU in minutes; with ``data=`` the real files and ``model=`` real weights it runs
the real experiment. The fine-tuned image-text row is reported too (the seed's point: fused and
fine-tuned beats plain image-text). The last line printed is a JSON object with the table.

With a BLIP-2 model (``model="hf:<Blip2ForImageTextRetrieval dir or hub id>"``, or
``family="blip2"``: a tiny random one whose tokenizer is built from the train texts, as
``xmr model tiny --family blip2 --data DATA --split train`` builds it) the recipe is the seed's
own: the text -> image+caption rows rank BLIP-2's multimodal items (the Q-Former over the image
and its caption, ``xmr evaluate --fused blip2``; the weighted fusion w=0.5 is reported beside
them) and the fine-tuning trains those items (``multimodal_items=true``: query text -> image +
one sampled caption, the vision tower frozen) with LAVIS's ITC loss, label smoothing 0.1
(``label_smoothing=0.1``, as LAVIS's Q-Former training that the seed fine-tunes with; a
``train_overrides`` entry overrides it).

Beside the seed's rows, xmr's learned fusion: a gate is learned on each model's frozen
embeddings (``xmr train --fused``, on the train split, selected on valid; for BLIP-2 each of the
K query vectors is fused with the caption) and its text -> image+caption rows are added
(``xmr evaluate --gate DIR``); ``gated=False`` (``--no-gated``) leaves them out (at smoke size
they add about 2 s on a CPU).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from xmr.data.readers import load_dataset
from xmr.data.synth_tianchi import generate_tianchi
from xmr.errors import XmrError
from xmr.workflows.demo import DemoConfig, create_demo_clip, demo_train_config
from xmr.workflows.evaluate import evaluate_model
from xmr.workflows.job_inputs import BLIP2_FUSED

RECALLS = ("R@1", "R@5", "R@10")
# LAVIS's BLIP-2 ITC loss: cross-entropy with label smoothing 0.1 (blip2_qformer.py).
BLIP2_LABEL_SMOOTHING = 0.1
# (row key, task, which metrics of an evaluation: t2i = images only, fused = image+caption)
ROWS = (
    ("image_text/zero_shot", "image-text", "zero-shot", "t2i"),
    ("fused/zero_shot", "text->(image+text)", "zero-shot", "fused/t2i"),
    ("image_text/fine_tuned", "image-text", "fine-tuned", "t2i"),
    ("fused/fine_tuned", "text->(image+text)", "fine-tuned", "fused/t2i"),
)


# With ``gated``: xmr's learned fusion (``xmr evaluate --gate``), after the seed's rows.
GATED_ROWS = (
    ("gated/zero_shot", "text->(image+text) gated", "zero-shot", "gated/t2i"),
    ("gated/fine_tuned", "text->(image+text) gated", "fine-tuned", "gated/t2i"),
)

FAMILIES = ("clip", "blip2")


def _demo_sizes() -> DemoConfig:
    # The demo's tiny CLIP at the demo's scale; captions and queries are short.
    return DemoConfig(epochs=20, batch_size=128, lr=1e-3, train_overrides={"text_source": "both"})


@dataclass
class TianchiRecipeConfig:
    """What the recipe runs on.

    Attributes:
        data: a tianchi-layout data set to use; None: generate one into ``OUT/data`` with
            ``n_train``/``n_valid``/``n_test`` products of ``image_size`` pixels in
            ``n_colours`` colours, from ``seed``.
        model: the encoder spec to start from (``hf:DIR``, ``hf:Salesforce/blip2-itm-vit-g``);
            None: a tiny random model of ``family``, its tokenizer built from the training texts.
        family: the tiny model made when ``model`` is None: ``"clip"`` (the demo's tiny CLIP,
            sizes from ``demo``) or ``"blip2"`` (``xmr model tiny --family blip2``'s model,
            ``blip2_query_tokens`` query tokens, ``blip2_embed_dim`` dimensions).
        fused: the item fusion of the text -> image+caption rows (``xmr evaluate --fused``): a
            weight W of ``normalize(W * image + (1 - W) * caption)``, ``"tune"`` (the default:
            W grid-searched on the train split, for each model) or a learned fusion directory.
            A BLIP-2 model always uses ``"blip2"`` (its multimodal items; the seed's fusion).
        eval_split: the split the table is scored on (the seed scores its valid set; the
            generated data has a test split besides the valid split used for model selection).
        demo: the tiny model's sizes and the training options (``epochs``, ``batch_size``,
            ``lr``, ``train_overrides``: any other TrainConfig field; the default trains on
            every text of an item, ``text_source="both"``: its queries and its 3 captions).
            Its data-set fields are not used (the recipe's own are).
        device: where models run ("auto": cuda when available, else cpu).
        gated: learn a gated fusion on each model (``xmr train --fused``) and report its rows
            (``gated/zero_shot``, ``gated/fine_tuned``) after the seed's.
    """

    data: str | None = None
    n_train: int = 1500
    n_valid: int = 200
    n_test: int = 400
    image_size: int = 32
    seed: int = 0
    n_colours: int = 8
    model: str | None = None
    family: str = "clip"
    blip2_query_tokens: int = 4
    blip2_embed_dim: int = 32
    fused: str = "tune"
    eval_split: str = "test"
    batch_size: int = 128
    device: str = "auto"
    gated: bool = True
    demo: DemoConfig = field(default_factory=_demo_sizes)

    @classmethod
    def for_family(cls, family: str = "clip", smoke: bool = False) -> TianchiRecipeConfig:
        """The default (or ``smoke``) config for a tiny model of ``family``: BLIP-2 with its
        own training options (:func:`blip2_demo_sizes`)."""
        cfg = cls.smoke() if smoke else cls()
        if family == "blip2":
            cfg = replace(cfg, family="blip2", demo=blip2_demo_sizes(smoke))
        return replace(cfg, family=family)

    @classmethod
    def smoke(cls) -> TianchiRecipeConfig:
        """A minute-long version (tests): 160 train products in 4 colours, a smaller CLIP."""
        demo = replace(
            DemoConfig.smoke(), epochs=10, batch_size=32, lr=3e-3, width=48, embed_dim=32,
            train_overrides={"text_source": "both"},
        )  # fmt: skip
        return cls(
            n_train=160, n_valid=48, n_test=64, image_size=24, n_colours=4, fused="0.5", demo=demo
        )


def blip2_demo_sizes(smoke: bool = False) -> DemoConfig:
    """Training options of the tiny BLIP-2 (the seed's fine-tuning: multimodal items, the
    query texts as positives, the vision tower frozen as by default)."""
    overrides = {"multimodal_items": True, "text_source": "pairs"}
    if smoke:
        return replace(DemoConfig.smoke(), epochs=6, batch_size=16, lr=1e-3,
                       train_overrides=overrides)  # fmt: skip
    return DemoConfig(epochs=20, batch_size=64, lr=1e-3, train_overrides=overrides)


def is_blip2(spec: str) -> bool:
    """Whether ``spec`` names a BLIP-2 model (``hf:`` + a dir or hub id whose config says
    ``blip-2``); read from its config.json only, without loading weights."""
    if not spec.startswith("hf:"):
        return False
    from transformers import AutoConfig  # heavy: only when asked

    try:
        config = AutoConfig.from_pretrained(spec[3:])
    except (OSError, ValueError):
        return False  # not a transformers model: the evaluation names the problem
    return getattr(config, "model_type", None) == "blip-2"


def _out(message: str = "") -> None:
    print(message, flush=True)


def _row(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    values = {r: metrics[f"{prefix}/{r}"] for r in RECALLS}
    # R_mean: the seed's mean of R@1/5/10, which is xmr's MeanRecall (checked, not assumed).
    values["R_mean"] = metrics[f"{prefix}/MeanRecall"]
    if not math.isclose(values["R_mean"], sum(values[r] for r in RECALLS) / 3, abs_tol=1e-9):
        raise AssertionError(f"{prefix}/MeanRecall is not the mean of R@1/5/10")
    return values


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The table in the seed's layout, recalls as percentages."""
    width = max([20, *(len(row["task"]) + 2 for row in rows.values())])
    head = f"{'task':<{width}}{'model':<12}{'train set':<14}" + "".join(
        f"{c:>8}" for c in (*RECALLS, "R_mean")
    )
    lines = [head, "-" * len(head)]
    for row in rows.values():
        lines.append(
            f"{row['task']:<{width}}{row['setting']:<12}{row['train_set']:<14}"
            + "".join(f"{100 * row[c]:>8.2f}" for c in (*RECALLS, "R_mean"))
        )
    return "\n".join(lines)


def run_tianchi_recipe(
    out: str | os.PathLike = "tianchi_recipe_out", config: TianchiRecipeConfig | None = None
) -> dict[str, Any]:
    """Run the recipe into ``out``; return (and print last, as JSON) the table and settings."""
    from xmr.train import train
    from xmr.train.fusion import train_fusion_on_dataset

    cfg = config or TianchiRecipeConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def elapsed() -> str:
        return f"{time.perf_counter() - start:.0f}s"

    if cfg.data is None:
        _out(f"[1/5] generating synthetic e-commerce data (tianchi layout) in {out / 'data'}")
        data = generate_tianchi(
            out / "data",
            n_train=cfg.n_train,
            n_valid=cfg.n_valid,
            n_test=cfg.n_test,
            image_size=cfg.image_size,
            seed=cfg.seed,
            n_colours=cfg.n_colours,
        )
    else:
        _out(f"[1/5] reading {cfg.data}")
        data = Path(cfg.data)
    dataset = load_dataset(data, "tianchi")
    train_split = dataset.split("train")
    scored = dataset.split(cfg.eval_split)
    _out(
        f"      train {len(train_split.items)} images / {len(train_split.queries)} queries, "
        f"{cfg.eval_split} {len(scored.items)} items / {len(scored.queries)} queries [{elapsed()}]"
    )

    if cfg.family not in FAMILIES:
        raise XmrError(f"family: {cfg.family!r} is not one of {', '.join(FAMILIES)}")
    model = cfg.model
    if model is None:
        tiny = out / "tiny_model"
        from xmr.models.tiny import create_tiny_blip, dataset_texts  # loads torch

        # The texts `xmr model tiny --data DATA --split train` builds its tokenizer from.
        texts = dataset_texts(dataset, "train")
        if cfg.family == "blip2":
            _out(f"[2/5] creating a tiny random BLIP-2 in {tiny} (tokenizer from train texts)")
            shutil.rmtree(tiny, ignore_errors=True)  # an earlier run's model: start afresh
            create_tiny_blip(
                tiny, "blip2", texts=texts, embed_dim=cfg.blip2_embed_dim, seed=cfg.seed,
                image_size=cfg.image_size, num_query_tokens=cfg.blip2_query_tokens,
            )  # fmt: skip
        else:
            _out(
                f"[2/5] creating the demo's tiny random CLIP in {tiny} (tokenizer from train texts)"
            )
            demo = replace(cfg.demo, image_size=cfg.image_size, seed=cfg.seed)
            create_demo_clip(tiny, texts, demo)
        model = f"hf:{tiny}"
        blip2 = cfg.family == "blip2"
    else:
        _out(f"[2/5] starting from {model}")
        blip2 = is_blip2(model)
    # BLIP-2: the seed's fused items are its multimodal ones, and the seed fine-tunes them.
    fused = BLIP2_FUSED if blip2 else cfg.fused
    if blip2 and cfg.fused not in (TianchiRecipeConfig.fused, BLIP2_FUSED):
        _out(f"note: fused={cfg.fused!r} is not used: with BLIP-2 the fused rows are its "
             "multimodal items (--fused blip2), the weighted w=0.5 fusion is reported beside")  # fmt: skip
    fused_prefix = "multimodal/t2i" if blip2 else "fused/t2i"
    demo = cfg.demo
    if blip2:
        overrides = {"label_smoothing": BLIP2_LABEL_SMOOTHING, **demo.train_overrides}
        demo = replace(demo, train_overrides={**overrides, "multimodal_items": True})
        if demo.train_overrides.get("text_source") == "both":
            # captions as positives of image+caption items would be learnt by copying: the
            # seed's positives are the queries
            demo = replace(demo, train_overrides={**demo.train_overrides, "text_source": "pairs"})

    def evaluate(spec: str, emb: str) -> dict[str, float]:
        gate = None
        if cfg.gated:
            gate = out / emb.replace("embeddings", "gate")
            shutil.rmtree(gate, ignore_errors=True)  # an earlier run's gate: learn afresh
            trained = train_fusion_on_dataset(
                spec, data, gate, format="tianchi",
                device=None if cfg.device == "auto" else cfg.device,
            )  # fmt: skip
            _out(
                f"      gate learned on {spec} ({trained.details['selected_on']} "
                f"{trained.best_metric} {trained.best_value:.4f}) -> {gate}"
            )
        result = evaluate_model(
            spec, dataset, split=cfg.eval_split, directions="t2i", fused=fused, gate=gate,
            emb_dir=out / emb, batch_size=cfg.batch_size, device=cfg.device, progress=False,
        )  # fmt: skip
        for warning in result.warnings:
            _out(f"      warning: {warning}")
        return dict(result.metrics)

    _out(f"[3/5] zero-shot on {cfg.eval_split}: image-text and text->(image+text), --fused {fused}")
    zero_shot = evaluate(model, "zero_shot_embeddings")
    _out(
        f"      R_mean {zero_shot['t2i/MeanRecall']:.4f} / "
        f"{zero_shot[f'{fused_prefix}/MeanRecall']:.4f} [{elapsed()}]"
    )

    model_dir = out / "model"
    what = " (multimodal items: query -> image + one sampled caption)" if blip2 else ""
    _out(f"[4/5] fine-tuning on the train split{what} -> {model_dir}")
    shutil.rmtree(model_dir, ignore_errors=True)  # an earlier run's model: start afresh
    demo = replace(demo, train_overrides={**demo.train_overrides, "device": cfg.device})
    train_cfg = demo_train_config(demo, model, data, model_dir, "tianchi")
    result = train(train_cfg)
    _out(
        f"      best valid {result.best_metric} {result.best_value:.3f} at step "
        f"{result.best_step}/{result.total_steps} [{elapsed()}]"
    )

    _out(f"[5/5] fine-tuned on {cfg.eval_split}")
    tuned = evaluate(f"hf:{model_dir}", "fine_tuned_embeddings")
    rows: dict[str, dict[str, Any]] = {}
    for key, task, setting, prefix in (*ROWS, *(GATED_ROWS if cfg.gated else ())):
        metrics = zero_shot if setting == "zero-shot" else tuned
        prefix = fused_prefix if prefix == "fused/t2i" else prefix
        rows[key] = {
            "task": task,
            "setting": setting,
            "train_set": "-" if setting == "zero-shot" else "tianchi train",
            **_row(metrics, prefix),
        }
    _out(f"\nseed 001's table on {cfg.eval_split} ({len(scored.queries)} queries; R@K in %):")
    _out(format_table(rows))
    summary = {
        "rows": rows,
        "model": model,
        "family": "blip2" if blip2 else ("clip" if cfg.model is None else None),
        "fine_tuned_model": str(model_dir),
        "fused": fused,
        "label_smoothing": train_cfg.label_smoothing,
        "fused_weight": {
            "zero_shot": zero_shot.get("fused/weight"),
            "fine_tuned": tuned.get("fused/weight"),
        },
        "eval_split": cfg.eval_split,
        "data": str(data),
        "seconds": round(time.perf_counter() - start, 1),
        "config": asdict(cfg),
    }
    if blip2:
        # the weighted fusion (w=0.5) the --fused blip2 evaluation scores beside the multimodal
        # items: the seed's fusion against xmr's, same model
        summary["weighted_fused_R_mean"] = {
            "zero_shot": zero_shot.get("fused/t2i/MeanRecall"),
            "fine_tuned": tuned.get("fused/t2i/MeanRecall"),
        }
    print(json.dumps(summary), flush=True)
    return summary
