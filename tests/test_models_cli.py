"""``xmr model tiny`` and ``xmr model info``."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from xmr.cli import main  # noqa: E402


def test_model_tiny_and_info(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["model", "tiny", str(out), "--embed-dim", "16", "--image-size", "32"]) == 0
    assert "hf:" in capsys.readouterr().out
    assert main(["model", "info", f"hf:{out}"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["backend"] == "hf" and manifest["embed_dim"] == 16
    assert manifest["preprocess"]["size"] == 32
    assert manifest["spec"] == f"hf:{out.resolve()}"


def test_model_tiny_from_data_set_texts(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--n-train", "20", "--n-test", "10"]) == 0
    capsys.readouterr()
    out = tmp_path / "tiny"
    assert main(["model", "tiny", str(out), "--data", str(data), "--seed", "1", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["embed_dim"] == 64 and len(manifest["fingerprint"]) == 64

    import xmr
    from xmr.models import create_encoder

    enc = create_encoder(str(out), device="cpu")
    dataset = xmr.load_dataset(data)
    texts = [q.text for split in dataset.splits.values() for q in split.queries.values()]
    ids = enc.tokenize(texts)["input_ids"]
    # Every word of the data set is in the vocabulary: no <unk>.
    assert (ids != enc.tokenizer.unk_token_id).all()


def test_model_errors(tmp_path, capsys):
    assert main(["model", "info", "not-a-model"]) == 2
    assert "unknown model spec" in capsys.readouterr().err
    assert main(["model", "tiny", str(tmp_path / "x"), "--embed-dim", "0"]) == 2
    assert "--embed-dim" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["model", "tiny", str(tmp_path / "a_file")]) == 2  # was a FileExistsError
    assert "a_file: exists and is not a directory" in capsys.readouterr().err
