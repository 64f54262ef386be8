"""xmr train: steps reduce the loss, resume equals an uninterrupted run, accumulation equals a
big batch, freezing, the config and the CLI. Tiny generated data and a tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from xmr.errors import XmrError  # noqa: E402
from xmr.train import TrainConfig, load_config, parse_overrides, train  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.models import create_tiny_clip

    root = tmp_path_factory.mktemp("train")
    data = generate_synthetic(
        root / "data", n_train=48, n_test=0, n_valid=24, image_size=16, seed=1, n_attribute_sets=8
    )
    texts = [
        t for ts in load_dataset(data, split="train").split("train").pairs.values() for t in ts
    ]
    model = create_tiny_clip(
        root / "tiny",
        texts=texts,
        embed_dim=16,
        image_size=16,
        patch_size=8,
        vision_width=32,
        text_width=32,
        vision_layers=2,
        text_layers=1,
        heads=2,
        context_length=32,
    )
    return {"data": str(data), "model": f"hf:{model}", "root": str(root)}


def _config(setup, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=setup["model"],
        data=setup["data"],
        out=str(out),
        epochs=2,
        batch_size=8,
        lr=2e-3,
        workers=0,
        progress=False,
        tensorboard=False,
        log_every=1,
        valid_split=None,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _batch_loss(spec: str, data: str, n: int = 16) -> float:
    """The contrastive loss of the first ``n`` training examples under model ``spec``."""
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder
    from xmr.train.data import example_keys, training_examples
    from xmr.train.losses import ClipLoss
    from xmr.train.model import TwoTower

    examples = training_examples(load_dataset(data, split="train").split("train"))[:n]
    encoder = create_encoder(spec, device="cpu")
    module = TwoTower(encoder, TrainConfig(model=spec, data=data, out="x"))
    pixels = torch.stack([encoder.preprocess(e.image.open()) for e in examples])
    texts = [e.texts[0] for e in examples]
    keys = torch.tensor([example_keys(e, t) for e, t in zip(examples, texts, strict=True)])
    with torch.no_grad():
        image, text, scale, _ = module(pixels, encoder.tokenize(texts))
        return float(ClipLoss()(image, text, image, text, keys, keys, scale))


def test_training_steps_reduce_the_loss(setup, tmp_path):
    out = tmp_path / "run"
    result = train(_config(setup, out, epochs=5))
    assert result.global_step == result.total_steps == 5 * (48 // 8)
    assert not result.interrupted
    before = _batch_loss(setup["model"], setup["data"])
    after = _batch_loss(f"hf:{out}", setup["data"])
    assert after < before - 0.1, (before, after)
    # The output directory is a model transformers loads by itself, with config and logs.
    from transformers import CLIPModel

    CLIPModel.from_pretrained(out)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["epochs"] == 5 and saved["extra"]["derived"]["steps_per_epoch"] == 6
    assert TrainConfig.from_dict(saved).lr == pytest.approx(2e-3)
    log_rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows] == list(range(1, 31))
    assert (out / "train_log.csv").read_text().splitlines()[0].startswith("step,epoch,loss")
    assert all(r["logit_scale"] <= 100.0 + 1e-4 for r in log_rows)


def test_resume_equals_uninterrupted(setup, tmp_path):
    full = tmp_path / "full"
    cfg = dict(epochs=2, valid_split="valid", eval_every=4)
    a = train(_config(setup, full, **cfg))
    parts = tmp_path / "parts"
    first = train(_config(setup, parts, **cfg), stop_after_steps=5)
    assert first.interrupted and first.global_step == 5
    assert (parts / "checkpoints" / "last.pt").is_file()
    second = train(_config(setup, parts, **cfg), stop_after_steps=4)
    assert second.global_step == 9
    b = train(_config(setup, parts, **cfg))
    assert b.global_step == a.global_step == 12 and not b.interrupted
    wa, wb = _weights(full), _weights(parts)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)
    la = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (parts / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [r["step"] for r in la]
    for ra, rb in zip(la, lb, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5)
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((parts / "metrics.json").read_text())
    assert [h["step"] for h in mb["history"]] == [4, 8, 12]
    assert mb["best_step"] == ma["best_step"]
    assert mb["best_value"] == pytest.approx(ma["best_value"], abs=1e-6)
    # A resumed run with other trajectory settings is refused.
    with pytest.raises(XmrError, match="lr"):
        train(_config(setup, parts, **cfg, lr=1e-3))


def test_feature_accumulation_equals_one_big_batch(setup, tmp_path):
    """accum_mode=features: 2 micro-batches of 8 give the gradient of one batch of 16 (the same
    weights after the same steps); gradient accumulation is different (two small batches)."""
    # eps=1 makes AdamW's first steps ~linear in the gradient (lr * g / (|g| + 1)), so equal weights
    # mean equal gradients (with a tiny eps, float noise on zero-gradient parameters such as the
    # attention key biases would be blown up to +-lr).
    common = dict(
        epochs=1,
        max_train_items=32,
        grad_clip=None,
        warmup_steps=0,
        eps=1.0,
        lr=0.5,
        weight_decay=0.0,
    )
    big = train(_config(setup, tmp_path / "big", batch_size=16, **common))
    acc = train(_config(setup, tmp_path / "acc", batch_size=8, accum_steps=2, **common))
    train(
        _config(
            setup, tmp_path / "grad", batch_size=8, accum_steps=2, accum_mode="gradients", **common
        )
    )
    assert big.global_step == acc.global_step == 2
    wb, wa, wg = _weights(tmp_path / "big"), _weights(tmp_path / "acc"), _weights(tmp_path / "grad")
    for name in wb:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.allclose(wg[n], wb[n], atol=1e-5) for n in wb)


def test_freeze_text_tower_and_tower_learning_rates(setup, tmp_path):
    out = tmp_path / "frozen"
    train(_config(setup, out, epochs=1, freeze_text=True, image_lr=5e-3))
    before = load_file(str(Path(setup["model"][3:]) / "model.safetensors"))
    after = _weights(out)
    text = [n for n in after if n.startswith("text_model.") or n.startswith("text_projection")]
    vision = [n for n in after if n.startswith("vision_model.")]
    assert text and vision
    assert all(torch.equal(before[n], after[n]) for n in text)
    assert any(not torch.equal(before[n], after[n]) for n in vision)
    derived = json.loads((out / "train_config.json").read_text())["extra"]["derived"]
    assert derived["frozen_params"]["text"] > 0 and derived["frozen_params"]["image"] == 0
    assert "text" not in derived["param_groups"] and "image" in derived["param_groups"]


def test_param_groups_and_layer_freezing(setup):
    from xmr.models import create_encoder
    from xmr.train.model import TwoTower, freeze, param_groups, tower_of

    encoder = create_encoder(setup["model"], device="cpu")
    cfg = TrainConfig(model="m", data="d", out="o", freeze_image_layers=1, text_lr=1e-5)
    module = TwoTower(encoder, cfg)
    frozen = freeze(module, cfg)
    names = dict(module.model.named_parameters())
    assert not names["vision_model.encoder.layers.0.mlp.fc1.weight"].requires_grad
    assert not names["vision_model.embeddings.patch_embedding.weight"].requires_grad
    assert names["vision_model.encoder.layers.1.mlp.fc1.weight"].requires_grad
    assert names["vision_model.post_layernorm.weight"].requires_grad
    assert frozen["image"] > 0 and frozen["text"] == 0
    groups, infos = param_groups(module, cfg)
    by_name = {g["name"]: g for g in groups}
    assert by_name["text"]["lr"] == 1e-5 and by_name["image"]["lr"] == cfg.lr
    assert by_name["image_no_decay"]["weight_decay"] == 0.0
    assert by_name["image"]["weight_decay"] == cfg.weight_decay
    assert [p for p in by_name["other_no_decay"]["params"]] == [module.logit_scale]
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in module.model.named_parameters():
        if name.endswith("bias") or "layer_norm" in name or "layernorm" in name:
            assert id(p) not in decayed, name
    assert tower_of("visual.transformer.resblocks.0.attn.in_proj_weight") == "image"
    assert tower_of("transformer.resblocks.0.attn.in_proj_weight") == "text"
    assert tower_of("logit_scale") == "other"


def test_siglip_loss_bf16_and_grad_checkpointing(setup, tmp_path):
    out = tmp_path / "siglip"
    result = train(
        _config(
            setup,
            out,
            epochs=1,
            loss="siglip",
            precision="bf16",
            grad_checkpointing=True,
            max_train_items=16,
        )
    )
    assert result.global_step == 2 and result.last_loss is not None
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert "logit_bias" in rows[-1]


def test_config_file_overrides_and_errors(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 3\nlr: 1.0e-4\nbetas: [0.9, 0.95]\nloss: siglip\n")
    overrides = parse_overrides(["lr=3e-4", "freeze_text=true", "valid_split=null"])
    cfg = load_config(path, overrides, model="m", data="d", out="o")
    assert cfg.epochs == 3 and cfg.lr == pytest.approx(3e-4) and cfg.freeze_text is True
    assert cfg.betas == (0.9, 0.95) and cfg.valid_split is None and cfg.loss == "siglip"
    with pytest.raises(XmrError, match="did you mean 'epochs'"):
        load_config(None, {"epoch": 2}, model="m", data="d", out="o")
    with pytest.raises(XmrError, match="loss"):
        load_config(None, {"loss": "triplet"}, model="m", data="d", out="o")
    with pytest.raises(XmrError, match="batch_size"):
        load_config(None, {"batch_size": "many"}, model="m", data="d", out="o")
    with pytest.raises(XmrError, match="required"):
        load_config(None, {}, data="d", out="o")


def test_cli_train(setup, tmp_path, capsys):
    from xmr.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--model",
            setup["model"],
            "--data",
            setup["data"],
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--json",
            "lr=1e-3",
            "tensorboard=false",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 3 and summary["best_metric"] == "t2i/mAP@10"
    assert 0.0 <= summary["best_value"] <= 1.0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[-1]["step"] == 3 and "t2i/mAP@10" in history[-1]
    assert (out / "metrics.csv").is_file()
    from xmr.models import create_encoder

    assert create_encoder(f"hf:{out}", device="cpu").embed_dim == 16
    assert (
        main(["train", "--model", "m", "--data", setup["data"], "--out", str(out), "nope=1"]) == 2
    )


def test_undecodable_training_image_and_rerun_of_a_finished_run(setup, tmp_path):
    """A broken JPEG does not stop training: streaming replaces it in its batch by another
    example, caching leaves it out. Re-running a finished run trains no further."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    victim = sorted((data / "train" / "train_images").glob("*.jpg"))[0]
    victim.write_bytes(b"not a jpeg")
    # 16 items, one of them broken: 2 steps of 8 when streaming, 15 // 8 = 1 when cached.
    for cache, steps in (("no", 2), ("yes", 1)):
        out = tmp_path / f"broken-{cache}"
        kw = dict(data=str(data), epochs=1, max_train_items=16, cache_images=cache)
        result = train(_config(setup, out, **kw))
        assert result.global_step == steps and result.last_loss is not None
        again = train(_config(setup, out, **kw))
        assert again.global_step == steps and again.last_loss == pytest.approx(result.last_loss)
    derived = json.loads((tmp_path / "broken-yes" / "train_config.json").read_text())["extra"]
    assert derived["derived"]["train_examples"] == 15


def test_a_registered_loss_is_selectable(setup, tmp_path):
    """register_loss is the extension point: a new name passes config validation and is the
    loss the loop computes."""
    from xmr.train.losses import LOSSES, ClipLoss, register_loss

    calls = []

    class CountingLoss(ClipLoss):
        def forward(self, *args, **kwargs):
            calls.append(1)
            return super().forward(*args, **kwargs)

    if "counting-clip" not in LOSSES:
        register_loss("counting-clip")(CountingLoss)
    cfg = _config(setup, tmp_path / "run", epochs=1, loss="counting-clip", max_train_items=16)
    result = train(cfg)
    assert result.global_step == 2 and len(calls) == 2
    with pytest.raises(XmrError, match="counting-clip"):  # the error lists the registered names
        load_config(None, {"loss": "triplet"}, model="m", data="d", out="o")


def test_cross_encoder_training_refuses_contrastive_only_flags(tmp_path, capsys):
    from xmr.cli import main

    for flag in (["--workers", "2"], ["--no-resume"], ["--config", str(tmp_path / "c.yaml")]):
        code = main(["train", "--cross-encoder", "blip:x", "--data", str(tmp_path), "--out",
                     str(tmp_path / "o"), *flag])  # fmt: skip
        assert code == 2
        assert f"{flag[0]} does not apply" in capsys.readouterr().err


def test_validation_numbers_are_the_numbers_of_evaluate_model(setup, tmp_path):
    """Training validation and `xmr evaluate --model` agree, also when an image is corrupt (it
    ranks last for every text and finds nothing as an image query, in both)."""
    import shutil

    import xmr
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder
    from xmr.train.validate import RetrievalEvaluator

    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    sorted((data / "valid" / "valid_images").iterdir())[0].write_bytes(b"\xff\xd8 truncated")
    split = load_dataset(data, split="valid").split("valid")
    encoder = create_encoder(setup["model"], device="cpu")
    validated = RetrievalEvaluator(split, batch_size=8)(encoder)
    evaluated = xmr.evaluate_model(encoder, data, split="valid", workers=0, progress=False)
    assert validated.keys() == evaluated.keys()
    for key, value in evaluated.items():
        assert validated[key] == pytest.approx(value, nan_ok=True), key
    assert validated["i2t/n_queries"] == len(split.items)


def test_ctrl_c_during_a_step_keeps_the_finished_steps(setup, tmp_path, monkeypatch):
    """A Ctrl-C lands in a step (where training spends its time): the step finishes, a
    checkpoint is saved after it, and the resumed run ends with the uninterrupted weights.
    Before, the interrupt inside the step skipped the save and lost every step since the last
    periodic checkpoint."""
    import os
    import signal

    from xmr.train.contrastive_step import ContrastiveStep

    cfg = dict(epochs=2, max_train_items=32)  # 4 steps per epoch, saved at epoch ends
    full = train(_config(setup, tmp_path / "full", **cfg))
    real_step, calls = ContrastiveStep.__call__, []

    def step_with_ctrl_c(self, micro):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step runs
        return real_step(self, micro)

    monkeypatch.setattr(ContrastiveStep, "__call__", step_with_ctrl_c)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(_config(setup, out, **cfg))
    monkeypatch.undo()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["progress"]["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = train(_config(setup, out, **cfg))
    assert resumed.global_step == full.global_step == 8
    wa, wb = _weights(tmp_path / "full"), _weights(out)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)


def test_bad_settings_fail_before_any_training(setup, tmp_path):
    """best_metric naming no validation metric used to fail after the first epoch with nothing
    saved (or, re-running a finished run, to print the old best value under the wrong name)."""
    from xmr.train.validate import check_best_metric

    for metric in ("foo", "t2i/R@7", "x2y/R@1", "t2i/a/b/R@1"):
        with pytest.raises(XmrError, match=f"best_metric '{metric}' is not a validation metric"):
            load_config(None, {"best_metric": metric}, model="m", data="d", out="o")
    check_best_metric("i2t/MedianRank")
    check_best_metric("t2i/vehicle/mAP@10")
    out = tmp_path / "run"
    with pytest.raises(XmrError, match="categories: pedestrian, vehicle"):
        train(_config(setup, out, valid_split="valid", best_metric="t2i/bicycle/mAP@10"))
    assert not (out / "checkpoints").exists() and not (out / "train_log.jsonl").exists()
    for key, value in (
        ("max_train_items", 0),
        ("max_train_items", -1),
        ("save_every", -1),
        ("workers", -2),
        ("eval_every", -1),
        ("grad_clip", 0),
    ):
        with pytest.raises(XmrError, match=key):
            load_config(None, {key: value}, model="m", data="d", out="o")


def test_bad_output_directories_and_checkpoints(setup, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(XmrError, match="a_file: exists and is not a directory"):
        train(_config(setup, a_file))
    data_dir = tmp_path / "my_data"
    data_dir.mkdir()
    (data_dir / "labels.txt").write_text("keep")
    with pytest.raises(XmrError, match="holds other files .labels.txt"):
        train(_config(setup, data_dir))
    assert [p.name for p in data_dir.iterdir()] == ["labels.txt"]
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_text("garbage\n")
    with pytest.raises(XmrError, match="cannot read the training checkpoint"):
        train(_config(setup, out, epochs=1))
    (out / "checkpoints" / "last.pt").unlink()
    (out / "checkpoints" / "last.pt").mkdir()
    with pytest.raises(XmrError, match="last.pt: is not a file"):
        train(_config(setup, out, epochs=1))


def test_config_file_encoding_and_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"epochs: 3\nlr: caf\xe9\n")
    with pytest.raises(XmrError, match=r"cfg.yaml:2: not valid UTF-8"):
        load_config(path, model="m", data="d", out="o")
    path.write_text("epochs: 3\nbetas: [0.9, 0.98\n")
    with pytest.raises(XmrError, match=r"cfg.yaml:3: not valid YAML") as err:
        load_config(path, model="m", data="d", out="o")
    assert "\n" not in str(err.value)


def test_rerun_with_validation_after_a_run_without_it(setup, tmp_path, capsys):
    """A finished run without validation, re-run with validation, validates nothing: no best
    metric to report (the CLI used to crash formatting a missing value)."""
    from xmr.cli import main

    out = tmp_path / "run"
    train(_config(setup, out, epochs=1, max_train_items=16))
    again = train(_config(setup, out, epochs=1, max_train_items=16, valid_split="valid"))
    assert again.best_metric is None and again.best_value is None
    args = ["train", "--model", setup["model"], "--data", setup["data"], "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--lr", "2e-3", "--workers", "0",
            "max_train_items=16", "progress=false", "tensorboard=false", "log_every=1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    # A damaged log line (here not UTF-8) ends the log instead of stopping the run.
    with (out / "train_log.jsonl").open("ab") as fh:
        fh.write(b"\xff\xfe\n")
    assert main([*args, "--epochs", "1"]) == 0, capsys.readouterr().err


def test_a_killed_saves_temporaries_are_removed_by_the_next_run(setup, tmp_path):
    """A kill while the checkpoint or the model is written leaves a temporary as big as what it
    held (.last.pt.*.tmp, .export-*/): the next save removes it, once its writer is gone."""
    import os
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "train_config.json").write_text("{}")  # an earlier, killed run's directory
    stale_ckpt = out / "checkpoints" / f".last.pt.{gone.pid}-0123abcd.tmp"
    stale_ckpt.write_bytes(b"\0" * 100)
    stale_export = out / f".export-{gone.pid}-4567abcd"
    stale_export.mkdir()
    (stale_export / "model.safetensors").write_bytes(b"\0" * 100)
    live = out / f".export-{os.getpid()}-89abcdef"  # a writer still running: left alone
    live.mkdir()
    train(_config(setup, out, epochs=1, max_train_items=16))
    assert not stale_ckpt.exists() and not stale_export.exists() and live.exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"]
