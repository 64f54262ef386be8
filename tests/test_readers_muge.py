from __future__ import annotations

import pytest

import xmr
from readers_helpers import assert_data_error, b64, image_bytes
from xmr.errors import DataError

# Seed 004's example query lines, byte for byte.
SEED_TRAIN_QUERIES = (
    '{"query_id": 8426, "query_text": "胖妹妹松紧腰长裤", "item_ids": [42967]}\n'
    '{"query_id": 8427, "query_text": "大码长款棉麻女衬衫", "item_ids": [63397]}\n'
    '{"query_id": 8428, "query_text": "高级感托特包斜挎", "item_ids": [1076345, 517602]}\n'
)
SEED_TEST_QUERIES = (
    '{"query_id": 352962, "query_text": "厚底系带帆布鞋女"}\n'
    '{"query_id": 352976, "query_text": "日式粗陶咖啡杯"}\n'
    '{"query_id": 353590, "query_text": "豹纹雪纺半身"}\n'
)


def tsv(ids, *, urlsafe=False) -> str:
    return "".join(f"{iid}\t{b64(k, urlsafe=urlsafe)}\n" for k, iid in enumerate(ids))


@pytest.fixture
def muge(tmp_path):
    (tmp_path / "MR_train_imgs.tsv").write_text(tsv([42967, 63397, 1076345, 517602, 99]))
    (tmp_path / "MR_train_queries.jsonl").write_text(SEED_TRAIN_QUERIES, encoding="utf-8")
    (tmp_path / "MR_test_imgs.tsv").write_text(tsv([1000002, 1000016, 1000033], urlsafe=True))
    (tmp_path / "MR_test_queries.jsonl").write_text(SEED_TEST_QUERIES, encoding="utf-8")
    return tmp_path


def test_seed_layout(muge):
    assert xmr.detect_format(muge) == "muge"
    ds = xmr.load_dataset(muge)
    assert list(ds.splits) == ["train", "test"]
    train = ds.splits["train"]
    assert list(train.queries) == ["8426", "8427", "8428"]
    assert train.queries["8428"].text == "高级感托特包斜挎"
    assert train.relevance["8428"] == {"1076345", "517602"}
    assert train.pairs["63397"] == ["大码长款棉麻女衬衫"]
    assert len(train.items) == 5 and train.n_relevant_pairs() == 4
    # Lazy: an item refers to its TSV line; decoding happens on read and gives the bytes back.
    ref = train.items["63397"].image
    assert ref.kind == "tsv" and ref.line == 2
    assert ref.read_bytes() == image_bytes(1)
    test = ds.splits["test"]
    assert not test.has_relevance and len(test.queries) == 3
    assert test.items["1000033"].image.read_bytes() == image_bytes(2)  # urlsafe alphabet
    assert test.items["1000033"].image.open().size == (8, 8)


def test_one_split_and_file_path(muge):
    ds = xmr.load_dataset(muge, split="test")
    assert list(ds.splits) == ["test"]
    ds = xmr.load_dataset(muge / "MR_train_queries.jsonl")
    assert list(ds.splits) == ["train"] and ds.format == "muge"


def test_chinese_clip_naming(tmp_path):
    (tmp_path / "valid_imgs.tsv").write_text(tsv([1, 2, 3]))
    (tmp_path / "valid_texts.jsonl").write_text(
        '{"text_id": 7, "text": "红色连衣裙", "image_ids": [1, 3]}\n'
        '{"text_id": 8, "text": "蓝色帽子", "image_ids": [2]}\n',
        encoding="utf-8",
    )
    assert xmr.detect_format(tmp_path) == "muge"
    split = xmr.load_dataset(tmp_path).split()
    assert split.name == "valid"
    assert split.relevance == {"7": {"1", "3"}, "8": {"2"}}


def test_lazy_bad_base64_names_file_and_line(tmp_path):
    # Passes the cheap read-time check (alphabet), fails when decoded.
    (tmp_path / "MR_valid_imgs.tsv").write_text(f"1\t{b64(0)}\n2\tQUJD*\n3\tAAAAAAAA\n")
    (tmp_path / "MR_valid_queries.jsonl").write_text('{"query_id": 1, "query_text": "x"}\n')
    with pytest.raises(DataError) as info:
        xmr.load_dataset(tmp_path)
    assert "MR_valid_imgs.tsv:2" in str(info.value) and "field 'image'" in str(info.value)
    (tmp_path / "MR_valid_imgs.tsv").write_text(f"1\t{b64(0)}\n3\tAAAAAAAA\n")
    split = xmr.load_dataset(tmp_path).split()
    with pytest.raises(DataError, match=r"MR_valid_imgs.tsv:2.*undecodable image"):
        split.items["3"].image.open()


def test_a_tsv_rewritten_after_reading_is_an_error_not_another_image(tmp_path):
    """Images are read by byte offset; the id on the line is checked, also through an index's
    metadata, so a rewritten TSV never shows one item's image under another id."""
    from xmr.data.records import image_record, image_ref_from_record

    path = tmp_path / "MR_valid_imgs.tsv"
    path.write_text(f"1\t{b64(0)}\n2\t{b64(0)}\n")
    (tmp_path / "MR_valid_queries.jsonl").write_text('{"query_id": 1, "query_text": "x"}\n')
    ref = xmr.load_dataset(tmp_path).split().items["2"].image
    stored = image_ref_from_record(json_round_trip(image_record(ref)))
    assert ref.read_bytes() == stored.read_bytes() == image_bytes(0)
    # Same line lengths, ids swapped: the offsets now point at the other item.
    path.write_text(f"2\t{b64(0)}\n1\t{b64(0)}\n")
    for r in (ref, stored):
        with pytest.raises(DataError, match=r"holds id '1', not '2'.*changed") as info:
            r.open()
        assert info.value.field == "id" and "MR_valid_imgs.tsv:2" in str(info.value)


def json_round_trip(value):
    import json

    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    ("line", "field", "match"),
    [
        ("5\n", "image", "expected 'id<TAB>base64'"),
        ("5\t\n", "image", "empty base64"),
        ("\tQUJD\n", "id", "empty image id"),
        ("5\tnot base64 at all!\n", "image", "not base64"),
        ("1\tQUJD\n", "id", "duplicate image id '1' (first on line 1)"),
        ("5\tQUJD\textra\n", None, "found more than 2 tab-separated fields"),
    ],
)
def test_malformed_tsv_lines(tmp_path, line, field, match):
    tsv_file = tmp_path / "MR_train_imgs.tsv"
    tsv_file.write_text(f"1\t{b64(0)}\n{line}2\t{b64(1)}\n")
    (tmp_path / "MR_train_queries.jsonl").write_text(
        '{"query_id": 1, "query_text": "a", "item_ids": [1, 2]}\n'
    )
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path), file=tsv_file, line=2, field=field, match=match
    )
    ds = xmr.load_dataset(tmp_path, skip_bad=True)
    assert ds.skipped == 1
    assert ds.split().relevance == {"1": {"1", "2"}}
    # Offsets stay right after a skipped line.
    assert ds.split().items["2"].image.read_bytes() == image_bytes(1)


@pytest.mark.parametrize(
    ("line", "field", "match"),
    [
        (
            '{"query_id": 2, "query_text": "b", "item_ids": [77]}',
            "item_ids",
            "unknown image id '77'",
        ),
        ('{"query_id": 2, "item_ids": [1]}', "query_text", "missing field (or 'text')"),
        ('{"query_id": 2, "query_text": "", "item_ids": [1]}', "query_text", "empty text"),
        ('{"query_id": 2, "query_text": 5}', "query_text", "expected a string"),
        ('{"query_id": [2], "query_text": "b"}', "query_id", "expected an id"),
        ('{"query_id": 2, "query_text": "b", "item_ids": 1}', "item_ids", "expected a list"),
        ('{"query_id": 1, "query_text": "b"}', "query_id", "duplicate query id"),
        ('{"query_id": 2, "query_text": "b",', None, "bad JSON"),
        ("[1, 2]", None, "expected a JSON object"),
    ],
)
def test_malformed_query_lines(tmp_path, line, field, match):
    (tmp_path / "MR_train_imgs.tsv").write_text(tsv([1, 2]))
    queries = tmp_path / "MR_train_queries.jsonl"
    queries.write_text(
        '{"query_id": 1, "query_text": "a", "item_ids": [1]}\n'
        + line
        + '\n{"query_id": 3, "query_text": "c", "item_ids": [2]}\n'
    )
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path), file=queries, line=2, field=field, match=match
    )
    ds = xmr.load_dataset(tmp_path, skip_bad=True)
    assert ds.skipped == 1 and list(ds.split().queries) == ["1", "3"]


def test_non_utf8_queries(tmp_path):
    (tmp_path / "MR_train_imgs.tsv").write_text(tsv([1]))
    queries = tmp_path / "MR_train_queries.jsonl"
    queries.write_bytes(b'{"query_id": 1, "query_text": "\xc4\xe3\xba\xc3", "item_ids": [1]}\n')
    assert_data_error(
        lambda: xmr.load_dataset(tmp_path), file=queries, line=1, match="not valid UTF-8"
    )


def test_detection_leaves_tianchi_alone(tmp_path):
    (tmp_path / "MR_train_imgs.tsv").write_text(tsv([1]))
    (tmp_path / "MR_train_queries_with_captions.json").write_text("[]")
    assert xmr.detect_format(tmp_path) == "tianchi"
