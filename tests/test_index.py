"""Index build/save/load/add, exactness of Flat, auto selection, atomic replace, model checks."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from xmr.errors import ModelMismatchError, XmrError  # noqa: E402
from xmr.index import build_index, check_same_model, load_index, resolve_auto_spec  # noqa: E402
from xmr.index import store as index_store  # noqa: E402


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(ids):
    return [
        {
            "id": i,
            "image": {"path": f"/data/{i}.jpg"},
            "captions": [f"caption {i}"],
            "attribute": None,
            "category": "even" if n % 2 == 0 else "odd",
        }
        for n, i in enumerate(ids)
    ]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = _unit(rng, 500, 16)
    ids = [f"item{i:03d}" for i in range(500)]
    return x, ids, _unit(rng, 7, 16)


def test_flat_equals_brute_force(data):
    x, ids, q = data
    index = build_index(x, ids, "Flat")
    assert index.backend.is_exact and index.manifest["recall"] is None
    hits = index.search(q, k=10)
    scores = q @ x.T
    for row, s in zip(hits, scores, strict=True):
        order = np.argsort(-s, kind="stable")[:10]
        assert [h.id for h in row] == [ids[i] for i in order]
        np.testing.assert_allclose([h.score for h in row], s[order], rtol=0, atol=1e-5)


def test_vectors_are_normalised_for_cosine(data):
    x, ids, q = data
    index = build_index(x * 7.0, ids, "Flat")
    hit = index.search(q[:1] * 0.1, k=1)[0][0]
    assert hit.score == pytest.approx(float(np.max(q[0] @ x.T)), abs=1e-5)


def test_save_load_add_round_trip(tmp_path, data):
    x, ids, q = data
    model = {"spec": "hf:/m", "fingerprint": "abc", "embed_dim": 16}
    index = build_index(x[:400], ids[:400], "Flat", items=_items(ids[:400]), model=model)
    index.save(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == ["ids.json", "index.faiss", "items.jsonl", "manifest.json"]
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["count"] == 400 and manifest["dim"] == 16 and manifest["model"] == model
    assert manifest["index"]["type"] == "Flat" and manifest["xmr_version"] and manifest["created"]

    loaded = load_index(tmp_path / "idx")
    assert loaded.ids == ids[:400] and loaded.item("item007")["captions"] == ["caption item007"]
    assert [h.id for h in loaded.search(q, 5)[0]] == [h.id for h in index.search(q, 5)[0]]

    loaded.add(x[400:], ids[400:], _items(ids)[400:], model=model)
    loaded.save()
    again = load_index(tmp_path / "idx")
    assert len(again) == 500 and again.manifest["count"] == 500
    full = build_index(x, ids, "Flat")
    assert [h.id for h in again.search(q, 10)[0]] == [h.id for h in full.search(q, 10)[0]]

    with pytest.raises(XmrError, match="already in the index"):
        again.add(x[:1], ["item001"])
    with pytest.raises(XmrError, match="duplicate id"):
        again.add(x[:2], ["new", "new"])
    with pytest.raises(XmrError, match="dimension"):
        again.add(np.ones((1, 8), np.float32), ["new"])
    with pytest.raises(XmrError, match="dimension 8"):
        again.search(np.ones((1, 8), np.float32), 3)
    with pytest.raises(ModelMismatchError):
        again.add(x[:1], ["new"], model={"spec": "hf:/other", "fingerprint": "zzz"})
    assert len(again) == 500


def test_auto_picks_flat_small_and_ivf_large(data, caplog):
    x, ids, q = data
    assert resolve_auto_spec(10)[0] == "Flat"
    assert resolve_auto_spec(1_000_000)[0] == "IVF4000,Flat"
    small = build_index(x, ids, "auto", exact_max=1000)
    assert small.manifest["index"]["type"] == "Flat"
    assert "exact" in small.manifest["auto_reason"]
    with caplog.at_level("INFO", logger="xmr.index"):
        large = build_index(x, ids, "auto", exact_max=100, recall_queries=q)
    spec = large.manifest["index"]["type"]
    assert spec.startswith("IVF") and spec in large.manifest["auto_reason"]
    assert any(spec in r.message for r in caplog.records)
    recall = large.manifest["recall"]
    assert recall["k"] == 10 and recall["queries"] == 7 and 0.0 < recall["value"] <= 1.0


@pytest.mark.parametrize(
    ("spec", "exact"), [("Flat", True), ("auto", True), ("HNSW32", False), ("IVF16,Flat", False)]
)
def test_exactness_survives_save_and_load(tmp_path, data, spec, exact):
    # Regression: faiss reads a saved Flat inner-product index back as IndexFlatIP (a subclass
    # of the IndexFlat that index_factory made), and a class-name check called it approximate.
    x, ids, _ = data
    build_index(x, ids, spec).save(tmp_path / "i")
    loaded = load_index(tmp_path / "i")
    assert loaded.backend.is_exact is exact
    assert loaded.backend.describe()["exact"] is exact
    assert loaded.info()["index"]["exact"] is exact
    loaded.save()
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["index"]["exact"] is exact
    assert load_index(tmp_path / "i").backend.is_exact is exact


@pytest.mark.parametrize("spec", ["HNSW32", "IVF8,PQ4x4", "IVF16,Flat"])
def test_approximate_specs_report_recall(tmp_path, data, spec):
    x, ids, q = data
    index = build_index(x, ids, spec, items=_items(ids))
    assert not index.backend.is_exact and index.manifest["recall"]["query_source"] == "collection"
    assert index.manifest["recall"]["value"] > 0.2
    index.save(tmp_path / "i")
    loaded = load_index(tmp_path / "i")
    assert loaded.manifest["recall"] == index.manifest["recall"]
    assert loaded.backend.describe() == index.backend.describe()
    np.testing.assert_allclose(loaded.vector("item003"), index.vector("item003"), atol=1e-6)
    hits = loaded.search(q, 5, category="odd")
    assert all(loaded.item(h.id)["category"] == "odd" for row in hits for h in row)


def test_bad_spec_is_a_clear_error(data):
    x, ids, _ = data
    with pytest.raises(XmrError, match="Nonsense"):
        build_index(x, ids, "Nonsense")
    with pytest.raises(XmrError, match="needs at least 4096"):
        build_index(x, ids, "IVF4096,Flat")


def test_category_filter(data):
    x, ids, q = data
    index = build_index(x, ids, "Flat", items=_items(ids))
    assert index.categories() == {"even": 250, "odd": 250}
    hits = index.search(q, 20, category="even")
    assert all(len(row) == 20 for row in hits)
    assert all(int(h.id[4:]) % 2 == 0 for row in hits for h in row)
    s = q @ x[::2].T
    assert [h.id for h in hits[0]] == [ids[::2][i] for i in np.argsort(-s[0])[:20]]
    with pytest.raises(XmrError, match="unknown category 'blue'.*even, odd"):
        index.search(q, 5, category="blue")


def test_failed_save_leaves_old_index_intact(tmp_path, data, monkeypatch):
    x, ids, q = data
    dest = tmp_path / "idx"
    old = build_index(x[:100], ids[:100], "Flat", items=_items(ids[:100]))
    old.save(dest)
    new = build_index(x, ids, "Flat", items=_items(ids))

    def broken(path, records):
        path.write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(index_store, "write_jsonl", broken)
    with pytest.raises(OSError, match="disk full"):
        new.save(dest)
    monkeypatch.undo()
    again = load_index(dest)
    assert len(again) == 100 and again.ids == ids[:100]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left behind

    new.save(dest)  # and a good save replaces it
    assert len(load_index(dest)) == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_refuses_to_replace_a_foreign_directory(tmp_path, data):
    x, ids, _ = data
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(XmrError, match="not an xmr index"):
        build_index(x, ids, "Flat").save(foreign)
    assert (foreign / "holiday.jpg").exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(XmrError, match="no such index directory"):
        load_index(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(XmrError, match="not an xmr index"):
        load_index(tmp_path / "x")


def test_check_same_model():
    a = {"spec": "hf:/a", "fingerprint": "1"}
    check_same_model(a, {"spec": "hf:/copy-of-a", "fingerprint": "1"})
    check_same_model(None, a)
    with pytest.raises(ModelMismatchError, match="hf:/b"):
        check_same_model(a, {"spec": "hf:/b", "fingerprint": "2"})


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_builds_leftovers_are_cleaned_up(tmp_path, data):
    """A build killed while writing leaves ``.NAME.new-PID-*`` (as big as the index); the next
    save of the same index removes it. A live writer's directory is left alone."""
    x, ids, _ = data
    dest = tmp_path / "idx"
    build_index(x[:50], ids[:50], "Flat").save(dest)
    dead = tmp_path / f".idx.new-{_dead_pid()}-0123abcd"
    dead.mkdir()
    (dead / "index.faiss").write_bytes(b"\0" * 1000)
    live = tmp_path / f".idx.new-{os.getpid()}-4567abcd"
    live.mkdir()
    build_index(x, ids, "Flat").save(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["idx", live.name])
    assert len(load_index(dest)) == 500


def test_an_index_moved_aside_by_a_killed_swap_is_put_back(tmp_path, data):
    x, ids, _ = data
    build_index(x[:50], ids[:50], "Flat").save(tmp_path / "idx")
    aside = tmp_path / f".idx.old-{_dead_pid()}-0123abcd"
    os.rename(tmp_path / "idx", aside)
    with pytest.raises(XmrError, match="previous index at"):
        load_index(tmp_path / "idx")
    build_index(x, ids, "Flat").save(tmp_path / "idx")
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert len(load_index(tmp_path / "idx")) == 500


def test_index_files_get_the_usual_permissions(tmp_path, data):
    """Temporary names must not leak mkstemp's 0600 / mkdtemp's 0700 into the result: a
    service running as another user must be able to read the index."""
    x, ids, _ = data
    old_umask = os.umask(0o022)
    try:
        build_index(x, ids, "Flat").save(tmp_path / "idx")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "idx").stat().st_mode & 0o777 == 0o755
    for f in (tmp_path / "idx").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f.name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_directories_are_exchanged_in_one_step_on_linux(tmp_path):
    from xmr.io import atomic

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").touch()
    assert atomic._exchange(a, b)
    assert [p.name for p in b.iterdir()] == ["from_a"] and not any(a.iterdir())


def test_corrupt_index_files_are_clear_errors(tmp_path, data):
    x, ids, _ = data
    dest = tmp_path / "idx"
    build_index(x, ids, "Flat", items=_items(ids)).save(dest)
    good = {p.name: p.read_bytes() for p in dest.iterdir()}
    cases = {
        "index.faiss": [b"garbage", b""],
        "ids.json": [b"\xff\xfe", b'{"a": 1}', b"[1, 2"],
        "manifest.json": [b"[]", b"\xff", b'"text"'],
        "items.jsonl": [b"[1]\n", b"\xff\n"],
    }
    for name, contents in cases.items():
        for content in contents:
            (dest / name).write_bytes(content)
            with pytest.raises(XmrError, match=rf"idx.{name}|idx: "):
                load_index(dest)
            (dest / name).write_bytes(good[name])
    (tmp_path / "file").write_text("x")
    with pytest.raises(XmrError, match="no such index directory"):
        load_index(tmp_path / "file")


def test_bad_build_parameters_are_clear_errors(data):
    x, ids, _ = data
    for options in (
        {"nprobe": -3},
        {"nprobe": 0},
        {"ef_search": -1},
        {"train_size": 0},
        {"exact_max": -1},
    ):
        name = next(iter(options))
        with pytest.raises(XmrError, match=name):
            build_index(x, ids, "IVF4,Flat" if name != "ef_search" else "HNSW8", **options)
