"""Official-scorer parity (issue 12): each case against the official computation, written here
independently from the scorers' published behaviour (the Track2 baseline's ``cal_map_json.py``,
Chinese-CLIP's ``evaluation.py``, trec_eval's ordering), on small hand-made data sets."""

from __future__ import annotations

import json

import pytest

from readers_helpers import b64, write_image
from xmr.cli import main
from xmr.data.readers import load_dataset
from xmr.eval import PredictionError, evaluate_predictions, read_predictions
from xmr.eval.predictions import validate_predictions, write_predictions
from xmr.eval.submission import write_submission

# ------------------------------------------------------------------ the official computations


class Refused(Exception):
    """The official scorer stops without a score."""


def track2_official(gt_text: str, submission: dict) -> float:
    """The Track2 scorer's number: ground-truth lines ``text$name$name`` (each line stripped,
    split at every ``$``), results in the same texts and order, compared as exact strings; per
    line the sum of ``found / rank`` over the hits of the whole list, ``found`` starting at 1e-6,
    divided by ``found``; the mean over the ground-truth lines (no cut, no dedup)."""
    gt = [line.strip().split("$") for line in gt_text.splitlines()]
    results = submission["results"]
    if [g[0] for g in gt] != [r["text"] for r in results]:
        raise Refused("The order of texts is wrong.")
    total = 0.0
    for fields, result in zip(gt, results, strict=True):
        relevant = set(fields[1:])
        found, ap = 1e-6, 0.0
        for rank, name in enumerate(result["image_names"], 1):
            if name in relevant:
                found += 1
                ap += found / rank
        total += ap / found
    return total / len(results)


def cnclip_official(reference: list[dict], submission_text: str, k: int = 10) -> dict:
    """Chinese-CLIP's ``evaluation.py`` (text -> image): integer ids only, exactly ``k`` unique
    ids per line, every reference text present, any unparsable line refused; R@1/5/10 are hit
    rates over every reference text (one with no image counts 0)."""
    predictions = {}
    for line in submission_text.splitlines():  # the lines a file iteration yields
        try:
            obj = json.loads(line.strip())
        except json.JSONDecodeError as exc:
            raise Refused(f"cannot parse {line!r}") from exc
        ids = obj["image_ids"]
        if not isinstance(obj["text_id"], int) or not all(isinstance(i, int) for i in ids):
            raise Refused("ids must be integers")
        if len(ids) != k or len(set(ids)) != k:
            raise Refused("wrong number of ids or duplicates")
        predictions[obj["text_id"]] = ids
    if {r["text_id"] for r in reference} - predictions.keys():
        raise Refused("missing texts")
    out = {}
    for cut in (1, 5, 10):
        hits = sum(
            bool(set(r["image_ids"]) & set(predictions[r["text_id"]][:cut])) for r in reference
        )
        out[f"R@{cut}"] = hits / len(reference)
    return out


# ------------------------------------------------------------------------------ Track2 data


def track2_test(tmp_path, gt_lines: list[str], n_images: int = 16):
    """A Track2 test split as published: ``test_images/`` (``000000.jpg``...), ``test_text.txt``
    and ``test_gt.txt`` (which may name an image without its extension)."""
    root = tmp_path / "track2"
    images = root / "test" / "test_images"
    images.mkdir(parents=True)
    for i in range(n_images):
        write_image(images / f"{i:06d}.jpg", i)
    texts = [line.split("$", 1)[0] for line in gt_lines]
    (root / "test" / "test_text.txt").write_text("".join(t + "\n" for t in texts))
    (root / "test" / "test_gt.txt").write_text("".join(line + "\n" for line in gt_lines))
    return root


GT = [
    "a white car$000000.jpg$000001.jpg",
    "a red bus$000002",  # the ground truth names this image without its extension
    "a man walking$000003.jpg$000004.jpg$000005.jpg",  # 000006.jpg... are relevant to none
]
FILLERS = [f"{i:06d}.jpg" for i in range(6, 16)]  # relevant to no text


def submission(rows: list[tuple[str, list[str]]]) -> dict:
    return {"results": [{"text": t, "image_names": names} for t, names in rows]}


def padded(names: list[str], k: int = 10) -> list[str]:
    """``names`` then irrelevant images, ``k`` in all."""
    return (names + [n for n in FILLERS if n not in names])[:k]


def result_line(path, text: str) -> int:
    """The line where the result object of ``text`` opens."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if json.dumps(text) in line) - 1


def score(path, root, **kw):
    split = load_dataset(root, "track2", "test").split("test")
    return evaluate_predictions(path, split, **kw)[0]


def test_exact_names_score_as_the_track2_scorer(tmp_path):
    root = track2_test(tmp_path, GT)
    sub = submission([
        ("a white car", padded(["000007.jpg", "000001.jpg", "000000.jpg"])),
        ("a red bus", padded(["000009.jpg", "000002"])),
        ("a man walking", padded(["000005.jpg", "000008.jpg", "000003.jpg"])),
    ])  # fmt: skip
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub))
    official = track2_official("\n".join(GT), sub)
    assert official == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 2 + (1 + 2 / 3) / 2) / 3, abs=1e-6)
    assert score(path, root)["t2i/mAP@10"] == pytest.approx(official, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "written", "expected"),
    [
        ("a red bus", "000002.jpg", "000002"),  # gt without extension, submission with
        ("a white car", "000000", "000000.jpg"),  # gt with extension, submission without
    ],
)
def test_a_name_spelled_otherwise_is_a_problem_naming_its_line(tmp_path, text, written, expected):
    root = track2_test(tmp_path, GT)
    rows = {
        "a white car": padded(["000000.jpg", "000001.jpg"]),
        "a red bus": padded(["000002"]),
        "a man walking": padded(["000003.jpg"]),
    }
    rows[text] = padded([written])
    sub = submission(list(rows.items()))
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub, indent=1))
    # The official scorer counts the respelled name as a miss: the query scores 0 there.
    exact = submission([(t, padded([expected]) if t == text else n) for t, n in rows.items()])
    assert track2_official("\n".join(GT), sub) < track2_official("\n".join(GT), exact)
    with pytest.raises(PredictionError) as exc:
        score(path, root)
    [(line, message)] = exc.value.problems
    assert line == result_line(path, text)
    assert f"{written!r} is not how the ground truth names {expected!r}" in message
    assert "counts" in message and "as a miss" in message
    assert f"line {line}:" in str(exc.value)


def test_predict_writes_the_ground_truths_spelling(tmp_path):
    root = track2_test(tmp_path, GT)
    split = load_dataset(root, "track2", "test").split("test")
    assert (
        split.item_name("000002.jpg") == "000002" and split.item_name("000000.jpg") == "000000.jpg"
    )
    ranked = {q: [(iid, 1.0 - n / 100) for n, iid in enumerate(split.items)] for q in split.queries}
    path = write_submission(tmp_path / "sub.json", ranked, split, kind="track2")
    names = json.loads(path.read_text())["results"][0]["image_names"]
    assert names[:3] == ["000000.jpg", "000001.jpg", "000002"]
    # and the file scores exactly as the official scorer scores it
    official = track2_official("\n".join(GT), json.loads(path.read_text()))
    assert score(path, root)["t2i/mAP@10"] == pytest.approx(official, abs=1e-6)


def test_predict_without_ground_truth_writes_label_then_file_names(tmp_path):
    root = tmp_path / "t2"
    images = root / "test" / "test_images"
    images.mkdir(parents=True)
    for i in range(3):
        write_image(images / f"09000{i}.jpg", i)
    # The label file names pedestrians without extension (the seed's 090000): that spelling.
    (root / "test" / "test_label.txt").write_text(
        "090000$0,1,0$a man walking\n090001.jpg$0,1,0$a man walking\n090002$1,0,0$a woman\n"
    )
    split = load_dataset(root, "track2", "test").split("test")
    ranked = {q: [(iid, 1.0) for iid in split.items] for q in split.queries}
    path = write_submission(tmp_path / "s.json", ranked, split, kind="track2", k=3)
    assert json.loads(path.read_text())["results"][0]["image_names"] == [
        "090000", "090001.jpg", "090002"
    ]  # fmt: skip
    # Without any label file, the items are test_images/ and their file names are the names.
    (root / "test" / "test_label.txt").unlink()
    (root / "test" / "test_text.txt").write_text("a man walking\n")
    split = load_dataset(root, "track2", "test").split("test")
    ranked = {q: [(iid, 1.0) for iid in split.items] for q in split.queries}
    path = write_submission(tmp_path / "s2.json", ranked, split, kind="track2", k=3)
    assert json.loads(path.read_text())["results"][0]["image_names"] == [
        "090000.jpg", "090001.jpg", "090002.jpg"
    ]  # fmt: skip


def test_a_ground_truth_line_without_images_counts_zero(tmp_path, capsys):
    # judged, nothing relevant: the official scorer reads "text$" as a query with no image (a
    # line with no '$' at all is refused by xmr as a malformed record, issue 13)
    gt = [*GT, "a blue van$"]
    root = track2_test(tmp_path, gt)
    sub = submission([
        ("a white car", padded(["000000.jpg"])),
        ("a red bus", padded(["000002"])),
        ("a man walking", padded(["000003.jpg"])),
        ("a blue van", padded([])),
    ])  # fmt: skip
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub))
    official = track2_official("\n".join(gt), sub)
    assert official == pytest.approx(3 / 4, abs=1e-6)
    metrics = score(path, root)
    assert metrics["t2i/mAP@10"] == pytest.approx(official, abs=1e-6)
    assert (metrics["t2i/n_queries"], metrics["t2i/n_empty"]) == (4, 1)
    assert metrics["t2i/R@1"] == 0.75  # the empty query is a 0 in R@K as well
    lenient = score(path, root, skip_empty=True)
    assert lenient["t2i/mAP@10"] == 1.0 and lenient["t2i/n_empty_skipped"] == 1

    code = main(["evaluate", "--predictions", str(path), "--data", str(root), "--split", "test",
                 "--skip-empty-queries"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0
    assert "LENIENT" in out.out and "1 judged queries with no relevant item" in out.out
    assert "--skip-empty-queries: 1 queries" in out.err and "not the official numbers" in out.err
    code = main(["evaluate", "--predictions", str(path), "--data", str(root), "--json"])
    out = capsys.readouterr()
    assert json.loads(out.out)["t2i/mAP@10"] == pytest.approx(official, abs=1e-6)
    assert "LENIENT" not in out.out + out.err


def test_a_text_with_a_trailing_space_is_refused_as_the_scorer_refuses_it(tmp_path):
    root = track2_test(tmp_path, GT)
    sub = submission([
        ("a white car ", padded(["000000.jpg"])),
        ("a red bus", padded(["000002"])),
        ("a man walking", padded(["000003.jpg"])),
    ])  # fmt: skip
    with pytest.raises(Refused, match="order of texts"):
        track2_official("\n".join(GT), sub)
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub, indent=1))
    with pytest.raises(PredictionError) as exc:
        score(path, root)
    [(line, message)] = exc.value.problems
    assert line == result_line(path, "a white car ")
    assert "'a white car ' has surrounding whitespace" in message
    assert "The order of texts is wrong" in message


def test_a_repeated_name_is_refused_since_the_scorer_counts_it_twice(tmp_path):
    root = track2_test(tmp_path, GT)
    twice = ["000003.jpg", "000003.jpg", *padded(["000003.jpg"])[1:9]]
    sub = submission([
        ("a white car", padded(["000000.jpg"])),
        ("a red bus", padded(["000002"])),
        ("a man walking", twice),
    ])  # fmt: skip
    # The official scorer credits the repeat: AP (1 + 2/2) / 2 = 1 from one relevant image.
    once = submission([*((r["text"], r["image_names"]) for r in sub["results"][:2]),
                       ("a man walking", padded(["000003.jpg", "000011.jpg"]))])  # fmt: skip
    assert track2_official("\n".join(GT), sub) > track2_official("\n".join(GT), once)
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub))
    with pytest.raises(PredictionError, match="repeated relevant name as a second hit"):
        score(path, root)


# ------------------------------------------------------------------- Chinese-CLIP / MUGE data


def cnclip_valid(tmp_path, reference: list[dict], n_images: int = 12):
    root = tmp_path / "cn"
    root.mkdir()
    (root / "valid_imgs.tsv").write_text("".join(f"{100 + i}\t{b64(i)}\n" for i in range(n_images)))
    (root / "valid_texts.jsonl").write_text(
        "".join(json.dumps({**r, "text": f"text {r['text_id']}"}) + "\n" for r in reference)
    )
    return root


REFERENCE = [
    {"text_id": 1, "image_ids": [100, 101]},
    {"text_id": 2, "image_ids": [102]},
    {"text_id": 3, "image_ids": []},  # judged, nothing relevant: 0 in every mean
]
IMAGES = list(range(100, 112))


def lines_of(preds: dict[int, list[int]]) -> str:
    return "".join(json.dumps({"text_id": q, "image_ids": ids}) + "\n" for q, ids in preds.items())


def cn_preds():
    return {
        1: [105, 101, *[i for i in IMAGES if i not in (105, 101)][:8]],
        2: [102, *[i for i in IMAGES if i != 102][:9]],
        3: IMAGES[:10],
    }


def test_chinese_clip_empty_text_counts_zero(tmp_path):
    root = cnclip_valid(tmp_path, REFERENCE)
    text = lines_of(cn_preds())
    path = tmp_path / "pred.jsonl"
    path.write_text(text)
    official = cnclip_official(REFERENCE, text)
    assert official == {"R@1": 1 / 3, "R@5": 2 / 3, "R@10": 2 / 3}
    split = load_dataset(root, "muge", "valid").split("valid")
    metrics, _ = evaluate_predictions(path, split)
    for key, value in official.items():
        assert metrics[f"t2i/{key}"] == pytest.approx(value)
    assert metrics["t2i/MeanRecall"] == pytest.approx(sum(official.values()) / 3)
    assert metrics["t2i/n_queries"] == 3 and metrics["t2i/n_empty"] == 1


def test_string_ids_are_refused_as_chinese_clip_refuses_them(tmp_path):
    root = cnclip_valid(tmp_path, REFERENCE)
    preds = cn_preds()
    text = lines_of(preds).replace('"text_id": 2', '"text_id": "2"')
    with pytest.raises(Refused, match="integers"):
        cnclip_official(REFERENCE, text)
    path = tmp_path / "pred.jsonl"
    path.write_text(text)
    split = load_dataset(root, "muge", "valid").split("valid")
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path), split)
    [(line, message)] = exc.value.problems
    assert (
        line == 2 and "id '2' is a JSON string" in message and "write 2 without quotes" in message
    )
    text = lines_of({**preds, 1: [str(i) for i in preds[1]]})
    path.write_text(text)
    with pytest.raises(Refused):
        cnclip_official(REFERENCE, text)
    with pytest.raises(PredictionError, match="id '105' is a JSON string"):
        validate_predictions(read_predictions(path), split)


def test_a_blank_line_is_refused_as_the_scorer_cannot_parse_it(tmp_path):
    root = cnclip_valid(tmp_path, REFERENCE)
    good = lines_of(cn_preds()).splitlines(keepends=True)
    text = good[0] + "\n" + "".join(good[1:])
    with pytest.raises(Refused, match="parse"):
        cnclip_official(REFERENCE, text)
    path = tmp_path / "pred.jsonl"
    path.write_text(text)
    split = load_dataset(root, "muge", "valid").split("valid")
    with pytest.raises(PredictionError) as exc:
        validate_predictions(read_predictions(path), split)
    assert exc.value.problems == [
        (2, "blank line: the official scorer cannot parse it and refuses the file")
    ]


def test_non_numeric_string_ids_are_accepted_with_a_warning(tmp_path):
    from xmr.data.dataset import Item, Query, Split

    split = Split("valid", {f"x{i}": Item(f"x{i}") for i in range(3)},
                  {"q": Query("q", "t")}, {"q": {"x1"}})  # fmt: skip
    path = write_predictions(tmp_path / "p.jsonl", {"q": ["x0", "x1", "x2"]}, kind="muge")
    seen = []
    metrics, _ = evaluate_predictions(path, split, k=3, on_warning=seen.append)
    assert metrics["t2i/R@3"] == 1.0
    assert len(seen) == 1 and "refuse any id that is not a JSON integer" in seen[0]
    assert seen[0].startswith(f"{path}:1: ")


# -------------------------------------------------------------------------------- TREC runs


def trec_eval_order(run_text: str) -> dict[str, list[str]]:
    """trec_eval's ranking of a run: by score descending, ties by docid descending (strcmp);
    the rank column is ignored."""
    docs: dict[str, list[tuple[float, str]]] = {}
    for line in run_text.splitlines():
        qid, _, docid, _, value, _ = line.split()
        docs.setdefault(qid, []).append((float(value), docid))
    return {q: [d for _, d in sorted(rows, key=lambda r: (-r[0], [-b for b in r[1].encode()]))]
            for q, rows in docs.items()}  # fmt: skip


def test_trec_scores_keep_the_written_order_through_ties_and_rounding(tmp_path):
    import numpy as np

    # Float32 scores 1e-7 apart (6 decimals would tie them) and exact ties ordered against
    # trec_eval's docid-descending rule.
    base = np.float32(0.4548612)
    scores = [float(base), float(np.nextafter(base, np.float32(0))), 0.3, 0.3, 0.3, 0.1]
    ids = ["d1", "d9", "a", "b", "c", "z"]
    path = write_predictions(tmp_path / "run.txt", {"q": ids}, kind="trec", scores={"q": scores})
    text = path.read_text()
    assert trec_eval_order(text) == {"q": ids}
    assert read_predictions(path).entries[0].ids == ids
    written = [float(line.split()[4]) for line in text.splitlines()]
    assert written[:3] == scores[:3] and written[5] == 0.1  # unchanged where order survives
    assert all(abs(w - s) < 1e-15 for w, s in zip(written, scores, strict=True))
    # what the 6-decimal writer did: the first two tie and trec_eval swaps them
    rounded = text.replace(repr(scores[0]), f"{scores[0]:.6f}").replace(
        repr(scores[1]), f"{scores[1]:.6f}"
    )
    assert trec_eval_order(rounded)["q"][:2] == ["d9", "d1"]


# ------------------------------------------------------------- with a model: round trips


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Generated Track2 data and a tiny random CLIP (as tests/test_model_eval.py builds them)."""
    pytest.importorskip("transformers")
    from builders import tiny_model
    from xmr.data.synth import generate_synthetic

    root = tmp_path_factory.mktemp("parity")
    data = generate_synthetic(
        root / "data", n_train=0, n_test=24, n_valid=0, image_size=16, n_attribute_sets=4, seed=5
    )
    return {"data": data, "model": f"hf:{tiny_model(root / 'model', seed=2)}"}


COMMON = ("--workers", "0", "--batch-size", "16", "--device", "cpu")


def cli_json(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def test_trec_round_trip_equals_evaluate_model_at_any_depth(world, tmp_path, capsys):
    data, model = world["data"], world["model"]
    split = load_dataset(data, split="test").split("test")
    depth = len(split.items)  # the whole ranking: every position must survive the file
    run = tmp_path / "run.trec"
    code = main(["predict", "--model", model, "--data", str(data), "--out", str(run),
                 "--submission-format", "trec", "--k", str(depth), *COMMON])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    for k in (10, depth):
        from_file = cli_json(capsys, "evaluate", "--predictions", run, "--data", data,
                             "--split", "test", "--k", k, "--json")  # fmt: skip
        from_model = cli_json(capsys, "evaluate", "--model", model, "--data", data, "--split",
                              "test", "--directions", "t2i", "--k", k, "--depth", "all",
                              "--json", *COMMON)  # fmt: skip
        assert from_file == from_model  # every key, exactly


def test_clip_benchmark_json_is_clip_benchmarks_recall(world, capsys):
    import numpy as np

    from xmr.models import create_encoder

    data, model = world["data"], world["model"]
    out = cli_json(capsys, "evaluate", "--model", model, "--data", data, "--split", "test",
                   "--json-format", "clip_benchmark", *COMMON)  # fmt: skip
    assert set(out) == {"dataset", "model", "task", "metrics", "xmr"}
    assert (out["dataset"], out["model"], out["task"]) == ("data", model, "zeroshot_retrieval")
    assert list(out["metrics"]) == [
        f"{name}_retrieval_recall@{k}" for k in (1, 5, 10) for name in ("image", "text")
    ]
    assert out["xmr"]["t2i/R@5"] == out["metrics"]["image_retrieval_recall@5"]

    # CLIP_benchmark's computation: per query, positives among the top K over positives > 0,
    # averaged over every text (image retrieval) and every image (text retrieval).
    split = load_dataset(data, split="test").split("test")
    encoder = create_encoder(model, device="cpu")
    text = np.asarray(encoder.encode_texts([q.text for q in split.queries.values()]))
    image = np.asarray(encoder.encode_images([it.image for it in split.items.values()]))
    items = list(split.items)
    positive = np.array([[i in split.relevance.get(q, ()) for i in items] for q in split.queries])
    scores = text @ image.T
    for k in (1, 5, 10):
        for name, s, p in (("image", scores, positive), ("text", scores.T, positive.T)):
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            true_pos = np.take_along_axis(p, top, axis=1).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = true_pos / p.sum(axis=1)
            want = float((recall > 0).mean())
            assert out["metrics"][f"{name}_retrieval_recall@{k}"] == pytest.approx(want, abs=1e-9)


def test_clip_benchmark_json_refuses_the_lenient_reading(world, capsys):
    code = main(["evaluate", "--model", world["model"], "--data", str(world["data"]),
                 "--json-format", "clip_benchmark", "--skip-empty-queries", *COMMON])  # fmt: skip
    assert code == 2 and "cannot be combined with --skip-empty-queries" in capsys.readouterr().err


def test_trec_round_trip_keeps_near_ties_and_exact_ties(tmp_path):
    """predict's path (rank_embedded -> write_submission trec) then evaluate --predictions gives
    evaluate --model's numbers when scores are 1e-7 apart or exactly tied, with docids named so
    that trec_eval's tie rule (docid descending) would reorder them."""
    import numpy as np

    from xmr.data.dataset import Item, Query, Split
    from xmr.eval.embedded import SplitEmbeddings, evaluate_embedded, rank_embedded

    values = [0.5 + 1.2e-7, 0.5, 0.3, 0.3, 0.1, 0.05]  # a, b nearly tied; c, d tied
    ids = ["a", "b", "c", "d", "e", "f"]
    split = Split("test", {i: Item(i) for i in ids}, {"q": Query("q", "t")}, {"q": {"b", "d"}})
    items = np.array([[v, np.sqrt(1 - v * v)] for v in values], dtype=np.float32)
    emb = SplitEmbeddings(split, np.array([[1.0, 0.0]], dtype=np.float32), items, "images")
    ranked = rank_embedded(emb, len(ids), device="cpu")
    assert [i for i, _ in ranked["q"]] == ids
    run = write_submission(tmp_path / "run.trec", ranked, split, kind="trec", k=len(ids))
    assert trec_eval_order(run.read_text())["q"] == ids
    from_file, _ = evaluate_predictions(run, split, k=len(ids))
    from_model = evaluate_embedded(emb, directions=("t2i",), k=len(ids), depth=0, device="cpu")
    assert from_file == from_model
    assert from_model["t2i/MRR"] == 0.5 and from_model[f"t2i/mAP@{len(ids)}"] == (1 / 2 + 2 / 4) / 2


def test_predict_warns_when_the_official_scorer_would_refuse_string_ids(tmp_path):
    from xmr.data.dataset import Item, Query, Split

    split = Split("test", {f"x{i}": Item(f"x{i}") for i in range(3)}, {"7": Query("7", "t")},
                  {"7": {"x1"}})  # fmt: skip
    seen = []
    ranked = {"7": [("x0", 0.9), ("x1", 0.5), ("x2", 0.1)]}
    path = write_submission(tmp_path / "s.jsonl", ranked, split, kind="muge", k=3,
                            on_warning=seen.append)  # fmt: skip
    assert json.loads(path.read_text()) == {"query_id": 7, "item_ids": ["x0", "x1", "x2"]}
    assert len(seen) == 1 and seen[0].startswith(f"{path}:") and "JSON integer" in seen[0]
