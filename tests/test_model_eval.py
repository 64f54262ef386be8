"""`xmr evaluate --model` and `xmr predict`: the whole tiny model -> encode -> index -> search ->
evaluate -> predict path on generated data, and the submission files it writes."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmr.cli import main

pytest.importorskip("transformers")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Generated Track2 data (two categories) and a tiny random CLIP built from its texts."""
    from builders import tiny_model
    from xmr.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("model_eval")
    data = generate_synthetic(
        root / "data", n_train=0, n_test=40, n_valid=0, image_size=16, n_attribute_sets=6, seed=3
    )
    model = tiny_model(root / "model", seed=1)
    return {"root": root, "data": data, "model": f"hf:{model}"}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate_json(capsys, *args):
    code, out, err = run_cli(capsys, "evaluate", *args, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


COMMON = ("--workers", "0", "--batch-size", "16", "--device", "cpu")


def test_whole_path_agrees_from_index_to_submission(world, tmp_path, capsys):
    """encode -> index -> search gives the rankings that predict writes, and evaluate --model
    reports what evaluate --predictions reports on that file."""
    from xmr.data.readers import load_dataset
    from xmr.search import Searcher

    data, model = world["data"], world["model"]
    emb, index = tmp_path / "emb", tmp_path / "index"
    assert run_cli(capsys, "encode", "--model", model, "--data", data, "--split", "test",
                   "--out", emb, *COMMON[:4])[0] == 0  # fmt: skip
    assert run_cli(capsys, "index", "build", emb, "--out", index, "--spec", "Flat")[0] == 0

    sub = tmp_path / "sub.json"
    code, out, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out", sub,
                             *COMMON)  # fmt: skip
    assert code == 0, err
    assert "wrote track2 predictions" in out
    results = json.loads(sub.read_text())["results"]
    split = load_dataset(data, split="test").split("test")
    assert [r["text"] for r in results] == [q.text for q in split.queries.values()]
    assert all(len(r["image_names"]) == len(set(r["image_names"])) == 10 for r in results)

    searcher = Searcher.from_index_dir(index, device="cpu")
    names = {iid: item.image.path.rsplit("/", 1)[-1] for iid, item in split.items.items()}
    for r in results[:8]:
        hits = searcher.search_text(r["text"], 10)
        assert [names[h.id] for h in hits] == r["image_names"]

    from_model = evaluate_json(capsys, "--model", model, "--data", data, "--split", "test",
                               "--directions", "t2i", *COMMON)  # fmt: skip
    from_file = evaluate_json(capsys, "--predictions", sub, "--data", data, "--split", "test")
    for key in ("t2i/R@1", "t2i/R@5", "t2i/R@10", "t2i/MeanRecall", "t2i/mAP@10",
                "t2i/mAP@10_trec", "t2i/nDCG@10", "t2i/vehicle/mAP@10"):  # fmt: skip
        assert from_model[key] == pytest.approx(from_file[key]), key
    assert not any(k.startswith("i2t/") for k in from_model)


def test_model_metrics_equal_brute_force(world, capsys):
    """The numbers of evaluate --model are the definitions applied to a numpy argsort."""
    from xmr.data.readers import load_dataset
    from xmr.eval.metrics import reference_metrics
    from xmr.models import create_encoder

    data, model = world["data"], world["model"]
    got = evaluate_json(capsys, "--model", model, "--data", data, *COMMON)
    split = load_dataset(data, split="test").split("test")
    encoder = create_encoder(model, device="cpu")
    text = np.asarray(encoder.encode_texts([q.text for q in split.queries.values()]))
    image = np.asarray(encoder.encode_images([it.image for it in split.items.values()]))
    item_ids, query_ids = list(split.items), list(split.queries)
    for direction, q_emb, c_emb, q_ids, c_ids, rel in (
        ("t2i", text, image, query_ids, item_ids, split.relevance),
        ("i2t", image, text, item_ids, query_ids, split.item_relevance()),
    ):
        scores = q_emb @ c_emb.T
        rankings = {
            # cut at 10: the evaluator ranks as deep as its largest cut-off (MRR included)
            q: [c_ids[j] for j in np.argsort(-scores[n], kind="stable")[:10]]
            for n, q in enumerate(q_ids)
        }
        want = reference_metrics(rankings, rel, ks=(1, 5, 10), k=10)
        for name in ("R@1", "R@5", "R@10", "mAP@10", "nDCG@10", "MRR"):
            assert got[f"{direction}/{name}"] == pytest.approx(want[name], abs=1e-6), name


def test_emb_dir_is_kept_and_reused(world, tmp_path, capsys):
    data, model = world["data"], world["model"]
    emb = tmp_path / "emb"
    first = evaluate_json(capsys, "--model", model, "--data", data, "--emb-dir", emb, *COMMON)
    manifest = json.loads((emb / "manifest.json").read_text())
    assert manifest["kinds"]["images"]["complete"] and manifest["kinds"]["texts"]["complete"]
    stamp = {p: p.stat().st_mtime_ns for p in emb.rglob("*.npz")}
    assert stamp
    again = evaluate_json(capsys, "--model", model, "--data", data, "--emb-dir", emb, *COMMON)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in emb.rglob("*.npz")} == stamp


def test_undecodable_image_ranks_last_and_is_reported(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    victim = sorted((data / "test" / "test_images").iterdir())[0]
    victim.write_bytes(b"not an image at all")
    code, out, err = run_cli(capsys, "evaluate", "--model", world["model"], "--data", data,
                             "--json", *COMMON)  # fmt: skip
    assert code == 0
    assert "1 item(s) could not be encoded" in err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert 0 <= metrics["t2i/mAP@10"] <= 1 and metrics["i2t/n_queries"] == 40

    sub = tmp_path / "sub.jsonl"
    code, _, err = run_cli(capsys, "predict", "--model", world["model"], "--data", data,
                           "--out", sub, "--submission-format", "muge", "--k", "39",
                           *COMMON)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in sub.read_text().splitlines()]
    assert len(rows) == len({r["query_id"] for r in rows}) == metrics["t2i/n_queries"]
    stem = victim.name.split(".")[0]
    assert all(not i.startswith(stem) for r in rows for i in map(str, r["item_ids"]))


def test_test_split_without_relevance_can_be_predicted_not_evaluated(world, tmp_path, capsys):
    """Seed 000's test set: test_text.txt and images, no labels."""
    src = world["data"] / "test"
    test = tmp_path / "data" / "test"
    shutil.copytree(src / "test_images", test / "test_images")
    texts = []
    for line in (src / "test_label.txt").read_text().splitlines():
        text = line.split("$")[2]
        if text not in texts:
            texts.append(text)
    (test / "test_text.txt").write_text("".join(t + "\n" for t in reversed(texts)))
    sub = tmp_path / "submit.json"
    code, _, err = run_cli(capsys, "predict", "--model", world["model"], "--data",
                           tmp_path / "data", "--out", sub, *COMMON)  # fmt: skip
    assert code == 0, err
    results = json.loads(sub.read_text())["results"]
    assert [r["text"] for r in results] == list(reversed(texts))
    code, _, err = run_cli(capsys, "evaluate", "--model", world["model"], "--data",
                           tmp_path / "data", *COMMON)  # fmt: skip
    assert code == 2 and "relevance" in err


def _muge(root, naming):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
        lines.append(f"{1000 + i}\t{base64.b64encode(buf.getvalue()).decode()}\n")
    texts = ["红色连衣裙", "蓝色牛仔裤", "白色运动鞋"]
    if naming == "muge":
        (root / "MR_valid_imgs.tsv").write_text("".join(lines))
        rows = [{"query_id": 1 + n, "query_text": t, "item_ids": [1000 + n]}
                for n, t in enumerate(texts)]  # fmt: skip
        name = "MR_valid_queries.jsonl"
    else:
        (root / "valid_imgs.tsv").write_text("".join(lines))
        rows = [{"text_id": 1 + n, "text": t, "image_ids": [1000 + n]} for n, t in enumerate(texts)]
        name = "valid_texts.jsonl"
    (root / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


@pytest.mark.parametrize(
    ("naming", "key", "ids"), [("muge", "query_id", "item_ids"), ("cnclip", "text_id", "image_ids")]
)
def test_muge_submission_follows_the_data_sets_naming(world, tmp_path, capsys, naming, key, ids):
    data = _muge(tmp_path / "muge", naming)
    sub = tmp_path / "sub.jsonl"
    code, out, err = run_cli(capsys, "predict", "--model", world["model"], "--data", data,
                             "--out", sub, "--json", *COMMON)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["submission_format"] == naming
    rows = [json.loads(line) for line in sub.read_text().splitlines()]
    assert [r[key] for r in rows] == [1, 2, 3]  # integers, as the official scorer reads them
    assert all(len(r[ids]) == 10 and all(isinstance(i, int) for i in r[ids]) for r in rows)
    scored = evaluate_json(capsys, "--predictions", sub, "--data", data)
    direct = evaluate_json(capsys, "--model", world["model"], "--data", data,
                           "--directions", "t2i", *COMMON)  # fmt: skip
    assert scored["t2i/MeanRecall"] == pytest.approx(direct["t2i/MeanRecall"])


def test_bad_requests_are_clear_errors(world, tmp_path, capsys):
    data, model = world["data"], world["model"]
    code, _, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out",
                           tmp_path / "x.json", "--k", "41", *COMMON)  # fmt: skip
    assert code == 2 and "needs exactly 41" in err and "40 items" in err
    assert not (tmp_path / "x.json").exists()
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", data,
                           "--directions", "t2x", *COMMON)  # fmt: skip
    assert code == 2 and "t2x" in err
    code, _, err = run_cli(capsys, "predict", "--model", f"hf:{tmp_path / 'nope'}", "--data",
                           data, "--out", tmp_path / "y.json", *COMMON)  # fmt: skip
    assert code == 2 and "nope" in err


def test_unwritable_outputs_fail_before_the_work(world, tmp_path, capsys):
    """--out / --per-query naming a directory (or a path under a file) used to be a traceback
    after the whole encoding and ranking; --emb-dir naming a file too."""
    import xmr

    data, model = world["data"], world["model"]
    a_dir, a_file = tmp_path / "a_dir", tmp_path / "a_file"
    a_dir.mkdir()
    a_file.write_text("x")
    emb = tmp_path / "emb"
    for out, message in ((a_dir, "is a directory"), (a_file / "x.json", "a_file is a file")):
        code, _, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out", out,
                               "--emb-dir", emb, *COMMON)  # fmt: skip
        assert code == 2 and message in err and "Traceback" not in err, err
        code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", data,
                               "--per-query", out, "--emb-dir", emb, *COMMON)  # fmt: skip
        assert code == 2 and message in err, err
        with pytest.raises(xmr.XmrError, match=message):
            xmr.predict(model, data, out, emb_dir=emb, progress=False)
    assert not emb.exists()  # refused before anything was encoded
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", data,
                           "--emb-dir", a_file, *COMMON)  # fmt: skip
    assert code == 2 and "a_file: exists and is not a directory" in err, err


def test_predict_with_rerank_reorders_only_the_top_k(world, tmp_path, capsys):
    from xmr.models.blip_itm import create_tiny_cross_encoder

    blip = create_tiny_cross_encoder(tmp_path / "blip", "blip")
    data, model = world["data"], world["model"]
    plain, reranked = tmp_path / "plain.jsonl", tmp_path / "reranked.jsonl"
    for out, extra in ((plain, ()), (reranked, ("--rerank", blip, "--rerank-k", "4"))):
        code, _, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out", out,
                               "--submission-format", "muge", *extra, *COMMON)  # fmt: skip
        assert code == 0, err
    before = [json.loads(line)["item_ids"] for line in plain.read_text().splitlines()]
    after = [json.loads(line)["item_ids"] for line in reranked.read_text().splitlines()]
    assert len(before) == len(after) > 10
    for b, a in zip(before, after, strict=True):
        assert sorted(map(str, a[:4])) == sorted(map(str, b[:4]))
        assert a[4:] == b[4:]
    assert any(a != b for a, b in zip(before, after, strict=True))


def test_python_api_matches_the_cli(world, tmp_path, capsys):
    import xmr

    data, model = world["data"], world["model"]
    metrics = xmr.evaluate_model(model, data, device="cpu", workers=0, progress=False)
    cli = evaluate_json(capsys, "--model", model, "--data", data, *COMMON)
    assert metrics == pytest.approx(cli, nan_ok=True)
    path = xmr.predict(model, data, tmp_path / "p.json", device="cpu", workers=0, progress=False)
    code, _, err = run_cli(capsys, "evaluate", "--predictions", path, "--data", data)
    assert code == 0, err


def test_evaluate_model_reports_fused_modes_and_rerank_stages(world, tmp_path, capsys):
    """--fused adds image/caption/fused rows on the same queries; --rerank adds the two-stage
    numbers beside the first stage's, which equal the plain run."""
    from test_fusion import write_tianchi
    from xmr.models.blip_itm import create_tiny_cross_encoder

    data = write_tianchi(tmp_path / "tianchi")
    model = world["model"]
    plain = evaluate_json(capsys, "--model", model, "--data", data, "--k", "4",
                          "--directions", "t2i", *COMMON)  # fmt: skip
    fused = evaluate_json(capsys, "--model", model, "--data", data, "--k", "4",
                          "--directions", "t2i", "--fused", "0.3", *COMMON)  # fmt: skip
    for mode in ("image", "caption", "fused"):
        assert 0 <= fused[f"{mode}/t2i/R@1"] <= 1
    assert fused["fused/weight"] == pytest.approx(0.3)
    assert fused["image/t2i/R@1"] == pytest.approx(plain["t2i/R@1"])

    blip = create_tiny_cross_encoder(tmp_path / "blip", "blip")
    two = evaluate_json(capsys, "--model", model, "--data", data, "--k", "4", "--directions",
                        "t2i", "--rerank", blip, "--rerank-k", "3", *COMMON)  # fmt: skip
    for key in ("t2i/R@1", "t2i/R@4", "t2i/mAP@4"):
        assert two[f"first_stage/{key}"] == pytest.approx(plain[key])
        assert 0 <= two[key] <= 1
    # Reranking only reorders the top 3 of 4: what is found within 4 stays found.
    assert two["t2i/R@4"] == pytest.approx(plain["t2i/R@4"])


def test_predict_with_fused_items_scores_as_evaluate_fused(world, tmp_path, capsys):
    from test_fusion import write_tianchi

    data = write_tianchi(tmp_path / "tianchi")
    model = world["model"]
    sub = tmp_path / "fused.jsonl"
    code, out, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out", sub,
                             "--k", "4", "--fused", "0.3", "--json", *COMMON)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["fused"] == "0.3"
    scored = evaluate_json(capsys, "--predictions", sub, "--data", data, "--k", "4")
    direct = evaluate_json(capsys, "--model", model, "--data", data, "--k", "4",
                           "--directions", "t2i", "--fused", "0.3", *COMMON)  # fmt: skip
    for name in ("R@1", "R@4", "mAP@4", "MRR"):
        assert scored[f"t2i/{name}"] == pytest.approx(direct[f"fused/t2i/{name}"]), name
    code, _, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out", sub,
                           "--k", "4", "--fused", "1.5", *COMMON)  # fmt: skip
    assert code == 2 and "1.5" in err


def test_fusion_tuning_reads_the_train_split_and_options_must_fit_the_source(
    world, tmp_path, capsys
):
    from test_fusion import write_tianchi

    data = write_tianchi(write_tianchi(tmp_path / "tianchi", "train"), "valid")
    model = world["model"]
    code, out, err = run_cli(capsys, "evaluate", "--model", model, "--data", data, "--split",
                             "valid", "--k", "4", "--fused", "tune", "--json", *COMMON)  # fmt: skip
    assert code == 0, err
    assert "optimistic" not in err  # tuned on train although only valid is evaluated
    assert any(k.startswith("fused/tuned/") for k in json.loads(out))
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", data, "--split",
                           "valid", "--k", "4", "--fused", "tune", "--tune-split", "valid",
                           *COMMON)  # fmt: skip
    assert code == 0 and "optimistic" in err
    code, _, err = run_cli(capsys, "evaluate", "--predictions", tmp_path / "p.jsonl", "--data",
                           data, "--rerank", "blip")  # fmt: skip
    assert code == 2 and "--rerank does not apply with --predictions" in err
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", data,
                           "--predictions-format", "muge")  # fmt: skip
    assert code == 2 and "--predictions-format does not apply with --model" in err


def test_depth_all_gives_the_uncut_mrr_and_ranks(world, capsys):
    from xmr.data.readers import load_dataset
    from xmr.eval.metrics import reference_metrics
    from xmr.models import create_encoder

    data, model = world["data"], world["model"]
    got = evaluate_json(capsys, "--model", model, "--data", data, "--depth", "all",
                        "--directions", "t2i", *COMMON)  # fmt: skip
    split = load_dataset(data, split="test").split("test")
    encoder = create_encoder(model, device="cpu")
    text = np.asarray(encoder.encode_texts([q.text for q in split.queries.values()]))
    image = np.asarray(encoder.encode_images([it.image for it in split.items.values()]))
    item_ids = list(split.items)
    scores = text @ image.T
    rankings = {
        q: [item_ids[j] for j in np.argsort(-scores[n], kind="stable")]
        for n, q in enumerate(split.queries)
    }
    want = reference_metrics(rankings, split.relevance, ks=(1, 5, 10), k=10)
    for name in ("MRR", "MeanRank", "MedianRank", "NotFound", "R@10", "mAP@10"):
        assert got[f"t2i/{name}"] == pytest.approx(want[name], abs=1e-6), name
    assert got["t2i/NotFound"] == 0.0  # every query has a relevant item somewhere
    code, _, err = run_cli(capsys, "evaluate", "--model", model, "--data", data, "--depth",
                           "deep", *COMMON)  # fmt: skip
    assert code == 2 and "--depth" in err


def test_the_library_has_every_option_of_the_commands(world, tmp_path, capsys):
    """Reranked, fused and per-query evaluation and reranked prediction from Python give what the
    commands give, option for option."""
    import xmr
    from test_fusion import write_tianchi
    from xmr.models.blip_itm import create_tiny_cross_encoder

    data = write_tianchi(tmp_path / "tianchi")
    blip = str(create_tiny_cross_encoder(tmp_path / "blip", "blip"))
    model = world["model"]
    lib = {"workers": 0, "batch_size": 16, "device": "cpu", "progress": False}
    result = xmr.evaluate_model(model, data, k=4, directions="t2i", rerank=blip, rerank_k=3,
                                fused=0.3, per_query=tmp_path / "lib.csv", **lib)  # fmt: skip
    cli = evaluate_json(capsys, "--model", model, "--data", data, "--k", "4", "--directions",
                        "t2i", "--rerank", blip, "--rerank-k", "3", "--fused", "0.3",
                        "--per-query", tmp_path / "cli.csv", *COMMON)  # fmt: skip
    assert isinstance(result, xmr.EvaluationResult) and result.source == "model"
    assert result.json_metrics().keys() == cli.keys()
    for key, value in cli.items():
        assert result.json_metrics()[key] == pytest.approx(value), key
    assert "first_stage/t2i/R@1" in result and "fused/t2i/R@1" in result
    assert (tmp_path / "lib.csv").read_text() == (tmp_path / "cli.csv").read_text()
    assert result.per_query_path == tmp_path / "lib.csv"
    assert len(result.per_query) == len((tmp_path / "lib.csv").read_text().splitlines()) - 1

    sub = xmr.predict(model, data, tmp_path / "lib.jsonl", k=4, rerank=blip, rerank_k=3,
                      out_format="muge", **lib)  # fmt: skip
    code, out, err = run_cli(capsys, "predict", "--model", model, "--data", data, "--out",
                             tmp_path / "cli.jsonl", "--k", "4", "--rerank", blip, "--rerank-k",
                             "3", "--out-format", "muge", "--json", *COMMON)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "lib.jsonl").read_text() == (tmp_path / "cli.jsonl").read_text()
    assert isinstance(sub, xmr.PredictionResult) and sub.reranked and sub.out_format == "muge"
    summary = json.loads(out)
    assert {**sub.summary(), "out": None} == {**summary, "out": None}
    assert Path(sub) == sub.path and os.fspath(sub) == str(sub.path)  # path-like, as it was


def test_library_errors_name_parameters_not_flags(world, tmp_path):
    import xmr

    data, model = world["data"], world["model"]
    for kwargs, message in (
        ({"k": 0}, "k must be at least 1"),
        ({"rerank": "blip", "rerank_k": 0}, "rerank_k must be at least 1"),
        ({"rerank": "blip", "rerank_mode": "best"}, "unknown rerank mode 'best'"),
        ({"fused": "half"}, "fused must be a weight in [0, 1], 'tune' or"),
        ({"depth": "deep"}, "depth takes a number or 'all'"),
    ):
        with pytest.raises(xmr.XmrError) as exc:
            xmr.evaluate_model(model, data, progress=False, **kwargs)
        assert message in str(exc.value) and "--" not in str(exc.value), str(exc.value)
    with pytest.raises(xmr.XmrError) as exc:
        xmr.predict(model, data, tmp_path / "p.json", fused="tune", progress=False)
    assert "fused must be a weight in [0, 1] or" in str(exc.value)
    assert "--" not in str(exc.value)
