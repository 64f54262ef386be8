from __future__ import annotations

import json

import pytest

import xmr
from readers_helpers import assert_data_error, write_image
from xmr.errors import XmrError

# Seed 003's evalscope example, byte for byte (paths relative to the project directory).
SEED_EVALSCOPE = """\
{"image_path": "custom_eval/multimodal/images/dog.jpg", "query": ["dog"]}
{"image_path": "custom_eval/multimodal/images/AMNH.jpg", "query": ["building"]}
{"image_path": "custom_eval/multimodal/images/tokyo.jpg", "query": ["city", "tokyo"]}
{"image_path": "custom_eval/multimodal/images/tesla.jpg", "query": ["car", "tesla"]}
{"image_path": "custom_eval/multimodal/images/running.jpg", "query": ["man", "running"]}
"""
# Seed 003's BEIR files (first lines), as evalscope writes them.
SEED_CORPUS = """\
{"_id":0,"text":"这是一张展示澳亚奇品牌的产品广告图片，图片中包含了六罐澳亚奇品牌的饮料。"}
{"_id":1,"text":"这是一副时尚的眼镜，镜框是金属材质的，颜色为玫瑰金色，镜腿部分是黑色的。"}
{"_id":2,"text":"这张图片展示了一位女性，她正在用手机拍摄自己的侧脸自拍。"}
"""
SEED_QUERIES = """\
{"_id":0,"text":"酸角汁饮料 整箱 云南"}
{"_id":1,"text":"达芬奇眼镜"}
{"_id":2,"text":"水钻蝴蝶结耳钉"}
"""
SEED_QRELS = "query-id\tcorpus-id\tscore\n0\t0\t1\n1\t1\t1\n2\t2\t1\n"


@pytest.fixture
def evalscope_project(tmp_path):
    images = tmp_path / "custom_eval" / "multimodal" / "images"
    for k, name in enumerate(["dog", "AMNH", "tokyo", "tesla", "running"]):
        write_image(images / f"{name}.jpg", k)
    data_dir = tmp_path / "custom_eval" / "multimodal" / "text-image-retrieval"
    data_dir.mkdir()
    (data_dir / "image_queries.jsonl").write_text(SEED_EVALSCOPE)
    return data_dir


@pytest.mark.parametrize("cwd", ["project", "elsewhere"])
def test_evalscope_seed_example(evalscope_project, tmp_path_factory, monkeypatch, cwd):
    project = evalscope_project.parents[2]
    monkeypatch.chdir(project if cwd == "project" else tmp_path_factory.mktemp("cwd"))
    assert xmr.detect_format(evalscope_project) == "evalscope"
    split = xmr.load_dataset(evalscope_project).split()
    assert split.name == "test"
    assert list(split.items)[0] == "custom_eval/multimodal/images/dog.jpg"
    assert [q.text for q in split.queries.values()] == [
        "dog", "building", "city", "tokyo", "car", "tesla", "man", "running"
    ]  # fmt: skip
    tokyo = "custom_eval/multimodal/images/tokyo.jpg"
    assert split.pairs[tokyo] == ["city", "tokyo"]
    assert split.item_relevance()[tokyo] == {"q000002", "q000003"}
    assert split.items[tokyo].image.open().size == (8, 8)


def test_evalscope_many_to_many_and_file_relative(tmp_path):
    for k in range(3):
        write_image(tmp_path / "imgs" / f"{k}.png", k)
    file = tmp_path / "image_queries.jsonl"
    file.write_text(
        '{"image_path": "imgs/0.png", "query": ["red", "square"]}\n'
        '{"image_path": "imgs/1.png", "query": ["square"]}\n'
        f'{{"image_path": "{tmp_path / "imgs" / "2.png"}", "query": []}}\n'
    )
    split = xmr.load_dataset(file).split()
    by_text = {split.queries[q].text: r for q, r in split.relevance.items()}
    assert by_text == {"red": {"imgs/0.png"}, "square": {"imgs/0.png", "imgs/1.png"}}
    assert len(split.items) == 3
    with pytest.raises(XmrError, match="no split 'train'"):
        xmr.load_dataset(file, split="train")


@pytest.mark.parametrize(
    ("line", "field", "match"),
    [
        (
            '{"image_path": "imgs/missing.png", "query": ["a"]}',
            "image_path",
            "image file not found",
        ),
        ('{"query": ["a"]}', "image_path", "missing field"),
        ('{"image_path": "imgs/0.png", "query": "a", "x": [1,}', None, "bad JSON"),
        ('{"image_path": "imgs/0.png", "query": [1]}', "query", "entry 0"),
        ('{"image_path": "imgs/0.png", "query": {"a": 1}}', "query", "expected a list"),
    ],
)
def test_evalscope_malformed(tmp_path, line, field, match):
    write_image(tmp_path / "imgs" / "0.png")
    file = tmp_path / "image_queries.jsonl"
    file.write_text('{"image_path": "imgs/0.png", "query": ["ok"]}\n' + line + "\n")
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path), file=file, line=2, field=field, match=match
    )
    assert xmr.load_dataset(tmp_path, skip_bad=True).skipped == 1


@pytest.fixture
def beir(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(SEED_CORPUS, encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text(SEED_QUERIES, encoding="utf-8")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(SEED_QRELS)
    return tmp_path


def test_beir_seed_files(beir):
    assert xmr.detect_format(beir) == "beir"
    ds = xmr.load_dataset(beir)
    split = ds.split()
    assert split.name == "test"
    assert split.relevance == {"0": {"0"}, "1": {"1"}, "2": {"2"}}
    assert split.items["1"].image is None
    assert split.items["1"].captions[0].startswith("这是一副时尚的眼镜")
    assert split.queries["1"].text == "达芬奇眼镜"


def test_beir_splits_titles_scores_and_no_qrels(beir):
    (beir / "corpus.jsonl").write_text(
        SEED_CORPUS + '{"_id": "d9", "title": "Glasses", "text": "Round frames."}\n'
    )
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n0\td9\t2\n1\t0\t0\n")
    ds = xmr.load_dataset(beir)
    assert list(ds.splits) == ["dev", "test"]
    dev = ds.splits["dev"]
    assert dev.relevance == {"0": {"d9"}} and list(dev.queries) == ["0"]  # score 0: not relevant
    assert dev.items["d9"].captions == ["Glasses Round frames."]
    assert dev.items is ds.splits["test"].items  # one corpus shared by the splits
    for f in (beir / "qrels").iterdir():
        f.unlink()
    (beir / "qrels").rmdir()
    split = xmr.load_dataset(beir).split()
    assert split.name == "test" and len(split.queries) == 3 and not split.has_relevance


@pytest.mark.parametrize(
    ("line", "field", "match"),
    [
        ("1\t77\t1", "corpus-id", "unknown corpus id '77'"),
        ("9\t1\t1", "query-id", "unknown query id '9'"),
        ("1\t1\thigh", "score", "score is not a number"),
        ("1\t1", "score", "found 2 field"),
    ],
)
def test_beir_malformed_qrels(beir, line, field, match):
    qrels = beir / "qrels" / "test.tsv"
    qrels.write_text(f"query-id\tcorpus-id\tscore\n0\t0\t1\n{line}\n")
    assert_data_error(lambda: xmr.load_dataset(beir), file=qrels, line=3, field=field, match=match)
    ds = xmr.load_dataset(beir, skip_bad=True)
    assert ds.skipped == 1 and ds.split().relevance == {"0": {"0"}}


def test_beir_malformed_corpus_and_queries(beir):
    corpus = beir / "corpus.jsonl"
    corpus.write_text(SEED_CORPUS + '{"_id": 5}\n')
    assert_data_error(lambda: xmr.load_dataset(beir), file=corpus, line=4, field="text")
    corpus.write_text(SEED_CORPUS + json.dumps({"_id": 1, "text": "again"}) + "\n")
    assert_data_error(
        lambda: xmr.load_dataset(beir), file=corpus, line=4, field="_id", match="duplicate"
    )
    corpus.write_text(SEED_CORPUS)
    queries = beir / "queries.jsonl"
    queries.write_text(SEED_QUERIES + '{"_id": 3, "text": null}\n')
    assert_data_error(lambda: xmr.load_dataset(beir), file=queries, line=4, field="text")
