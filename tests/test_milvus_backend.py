"""The Milvus index backend on a real embedded milvus-lite (in-process, in tmp dirs): FLAT equals
FAISS Flat, category filters with quotes and odd characters, add / upsert / delete / re-open,
the capability table, a dead server, an interrupted build, the CLI and the service."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

pytest.importorskip(
    "pymilvus", reason="the Milvus backend needs pymilvus: pip install 'xmr[milvus]'"
)
pytest.importorskip(
    "milvus_lite", reason="embedded Milvus needs milvus-lite: pip install 'xmr[milvus]'"
)
pytest.importorskip("faiss", reason="the FAISS reference needs faiss-cpu")

from xmr.errors import XmrError  # noqa: E402
from xmr.index import build_index, load_index  # noqa: E402
from xmr.index.milvus_backend import (  # noqa: E402
    PARTIAL_SUFFIX,
    MilvusBackend,
    category_filter,
    string_literal,
)
from xmr.index.milvus_capabilities import parse_spec  # noqa: E402

ODD = ['say "hi"', "back\\slash", "it's", "new\nline", "tab\there", "汉字 ünï", '") or id != "']


def vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    x = vectors(400)
    ids = [f"item-{i}" for i in range(len(x))]
    items = [{"id": i, "category": ODD[n % len(ODD)]} for n, i in enumerate(ids)]
    return x, ids, items


@pytest.fixture(scope="module")
def pair(data, tmp_path_factory):
    """The same embeddings in a Milvus FLAT index (saved and re-opened) and a FAISS Flat one."""
    x, ids, items = data
    out = tmp_path_factory.mktemp("milvus") / "index"
    built = build_index(
        x,
        ids,
        "FLAT",
        items=items,
        backend="milvus",
        backend_options={"lite_path": out / "milvus.db"},
    )
    built.save(out)
    return load_index(out), build_index(x, ids, "Flat", items=items)


def hits(index, q, k=10, **kw):
    return [[(h.id, h.score) for h in row] for row in index.search(q, k, **kw)]


def test_flat_search_equals_faiss_flat(pair):
    milvus, faiss = pair
    q = vectors(25, seed=1)
    got, want = hits(milvus, q), hits(faiss, q)
    assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
    np.testing.assert_allclose(
        [[s for _, s in r] for r in got], [[s for _, s in r] for r in want], atol=1e-5
    )
    assert milvus.info()["index"]["deployment"] == "lite" and milvus.manifest["recall"] is None
    np.testing.assert_allclose(milvus.vector("item-7"), faiss.vector("item-7"), atol=1e-6)


@pytest.mark.parametrize("category", ODD)
def test_category_filters_with_quotes_and_odd_characters(pair, category):
    milvus, faiss = pair
    q = vectors(3, seed=2)
    got = hits(milvus, q, 8, category=category)
    assert [[i for i, _ in r] for r in got] == [
        [i for i, _ in r] for r in hits(faiss, q, 8, category=category)
    ]
    assert all(milvus.item(i)["category"] == category for r in got for i, _ in r)
    assert all(len(r) == 8 for r in got)


def test_filter_literals_are_escaped():
    assert string_literal('a"b\\c') == '"a\\"b\\\\c"'
    assert category_filter('") or id != "') == 'category == "\\") or id != \\""'
    assert category_filter(None) == ""


def test_add_upsert_delete_and_reopen(data, tmp_path):
    x, ids, items = data
    out = tmp_path / "index"
    index = build_index(
        x[:300], ids[:300], "FLAT", items=items[:300], backend="milvus",
        backend_options={"lite_path": out / "milvus.db", "collection": "things"},
    )  # fmt: skip
    index.save(out)
    ref = build_index(x[:300], ids[:300], "Flat", items=items[:300])
    # Add new ids; a known id is refused, upsert replaces it (no duplicate row).
    index.add(x[300:], ids[300:], items[300:])
    ref.add(x[300:], ids[300:], items[300:])
    with pytest.raises(XmrError, match="already in the index"):
        index.add(x[:1], ids[:1])
    moved = vectors(1, seed=9)
    index.add(moved, ids[:1], [{"id": ids[0], "category": "new"}], upsert=True)
    ref.add(moved, ids[:1], [{"id": ids[0], "category": "new"}], upsert=True)
    gone = index.remove(["item-5", "item-350", "item-5"])
    assert gone == ["item-5", "item-350"] and ref.remove(["item-5", "item-350"])
    with pytest.raises(XmrError, match="nothing deleted"):
        index.remove(["item-5", "item-6"])
    assert index.remove(["item-5"], missing_ok=True) == []
    index.save()
    again = load_index(out)
    assert len(again) == len(ref) == 398 and again.backend.row_count() == 398
    q = np.vstack([vectors(10, seed=3), moved])
    assert [[i for i, _ in r] for r in hits(again, q)] == [[i for i, _ in r] for r in hits(ref, q)]
    assert hits(again, moved, 1)[0][0][0] == ids[0] and again.item(ids[0])["category"] == "new"
    assert hits(again, moved, 5, category="new") == [[(ids[0], pytest.approx(1.0, abs=1e-5))]]
    assert again.manifest["index"]["collection"] == "things"


def test_approximate_types_record_their_recall(tmp_path):
    x = vectors(3000, dim=32, seed=4)
    index = build_index(
        x, [str(i) for i in range(len(x))], "IVF_FLAT:nlist=64", backend="milvus", nprobe=2,
        backend_options={"lite_path": tmp_path / "i" / "milvus.db"},
    )  # fmt: skip
    recall = index.manifest["recall"]
    # Two lists of 64 are searched: a real inverted file, not lite's silent brute force.
    assert recall["k"] == 10 and 0.0 < recall["value"] < 0.9
    assert index.info()["index"]["nprobe"] == 2


@pytest.mark.parametrize(
    "spec, message",
    [
        ("IVF_PQ:nlist=8,m=4", "milvus-lite does not build IVF_PQ"),
        ("DISKANN", "silently search by brute force"),
        ("BOGUS", "unknown Milvus index type"),
        ("HNSW:ef=3", "not a HNSW parameter"),
        ("IVF_FLAT:nlist=0", "outside"),
        ("HNSW:M=x", "not an integer"),
    ],
)
def test_lite_refuses_what_it_would_silently_replace(tmp_path, spec, message):
    with pytest.raises(XmrError, match=message):
        build_index(
            vectors(20), [str(i) for i in range(20)], spec, backend="milvus",
            backend_options={"lite_path": tmp_path / "milvus.db"},
        )  # fmt: skip
    assert not (tmp_path / "milvus.db").exists()  # refused before the database was opened


def test_specs_parse_with_milvus_parameter_names():
    spec = parse_spec("hnsw:M=16,efConstruction=200")
    assert (spec.index_type, spec.params, str(spec)) == (
        "HNSW", {"M": 16, "efConstruction": 200}, "HNSW:M=16,efConstruction=200"
    )  # fmt: skip
    assert parse_spec("FLAT").is_exact and not parse_spec("IVF_SQ8").is_exact


def test_a_dead_server_is_one_clear_error(tmp_path):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        XmrError, match=f"cannot connect to the Milvus server at http://127.0.0.1:{port}"
    ):
        build_index(
            vectors(10), [str(i) for i in range(10)], "FLAT", backend="milvus",
            backend_options={"uri": f"http://127.0.0.1:{port}", "timeout": 1},
        )  # fmt: skip
    with pytest.raises(XmrError, match="password"):
        MilvusBackend.create(4, "FLAT", uri="http://root:secret@127.0.0.1:1")


def test_an_interrupted_build_leaves_the_old_collection_and_the_next_replaces_it(data, tmp_path):
    x, ids, items = data
    out = tmp_path / "index"
    opts = {"lite_path": out / "milvus.db"}
    first = build_index(
        x[:50], ids[:50], "FLAT", items=items[:50], backend="milvus", backend_options=opts
    )
    first.save(out)
    # A second build dies after its rows are in (before save): nothing of it is visible.
    build_index(x[50:120], ids[50:120], "FLAT", backend="milvus", backend_options=opts)
    old = load_index(out)
    assert len(old) == 50 and old.backend.row_count() == 50
    assert old.backend.client.has_collection("xmr_items" + PARTIAL_SUFFIX)  # marked partial
    assert hits(old, x[:1], 1)[0][0][0] == ids[0]
    # The next build replaces both the partial collection and the old one.
    build_index(
        x[100:], ids[100:], "FLAT", items=items[100:], backend="milvus", backend_options=opts
    ).save(out)
    new = load_index(out)
    assert len(new) == 300 and new.backend.row_count() == 300 and ids[0] not in new
    assert not new.backend.client.has_collection("xmr_items" + PARTIAL_SUFFIX)


def test_a_milvus_build_never_writes_into_a_faiss_index(data, tmp_path):
    from xmr.workflows.index_build import milvus_options

    x, ids, _ = data
    build_index(x[:20], ids[:20], "Flat").save(tmp_path / "faiss")
    with pytest.raises(XmrError, match="holds a faiss index"):
        milvus_options(tmp_path / "faiss")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(XmrError, match="not an xmr index"):
        milvus_options(tmp_path / "mine")


# --- the CLI and the service on a Milvus index of real encoded images -------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, serve_index):
    pytest.importorskip("fastapi")
    from xmr.cli import main

    built = serve_index
    emb = built["index_dir"].parent / "emb"
    out = tmp_path_factory.mktemp("milvus-cli") / "index"
    assert main(["index", "build", str(emb), "--out", str(out), "--backend", "milvus"]) == 0
    return {**built, "milvus_dir": out, "emb": emb}


def test_cli_build_info_search_delete(served, capsys):
    from xmr.cli import main

    out = served["milvus_dir"]
    capsys.readouterr()
    assert main(["index", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FLAT (exact; milvus-lite)" in text and "collection xmr_items" in text
    assert main(["search", str(out), "a red circle", "-k", "3", "--json"]) == 0
    milvus_hits = json.loads(capsys.readouterr().out)
    assert main(["search", str(served["index_dir"]), "a red circle", "-k", "3", "--json"]) == 0
    faiss_hits = json.loads(capsys.readouterr().out)
    assert _ids(milvus_hits) == _ids(faiss_hits) and len(_ids(milvus_hits)) == 3
    assert main(["search", str(out), "a red circle", "--category", "square", "--json"]) == 0
    squares = _ids(json.loads(capsys.readouterr().out))
    assert squares and all(load_index(out).item(i)["category"] == "square" for i in squares)
    victim = _ids(milvus_hits)[0]
    assert main(["index", "delete", str(out), victim, "missing-id", "--missing-ok", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == [victim] and report["not_found"] == ["missing-id"]
    assert report["count"] == served["n"] - 1
    assert main(["index", "add", str(out), str(served["emb"]), "--upsert"]) == 0
    assert load_index(out).backend.row_count() == served["n"] == len(load_index(out))


def _ids(answer) -> list[str]:
    rows = answer["results"] if isinstance(answer, dict) else answer
    if rows and isinstance(rows[0], dict) and "results" in rows[0]:
        rows = rows[0]["results"]
    return [r["id"] for r in rows]


def test_the_service_searches_and_deletes_on_a_milvus_index(served):
    from fastapi.testclient import TestClient

    from xmr.serve import ServeSettings, create_app

    token = "milvus-test-token"
    app = create_app(served["milvus_dir"], ServeSettings(allow_writes=True, token=token))
    with TestClient(app) as c:
        n = c.get("/api/health").json()["items"]
        r = c.post("/api/search", json={"q": "a blue square", "k": 4, "category": "square"})
        assert r.status_code == 200, r.text
        found = [h["id"] for h in r.json()["results"]]
        assert len(found) == 4 and all(
            c.get(f"/api/items/{i}").json()["category"] == "square" for i in found
        )
        victim = found[0]
        assert c.delete(f"/api/items/{victim}").status_code == 403  # no token
        r = c.delete(f"/api/items/{victim}", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == {"deleted": victim, "items": n - 1}
        assert c.get(f"/api/items/{victim}").status_code == 404
        r = c.delete(f"/api/items/{victim}", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 404
        again = c.post("/api/search", json={"q": "a blue square", "k": 4}).json()["results"]
        assert victim not in [h["id"] for h in again]
        # An upload is added (upserted into the collection) and found by its own image.
        png = _png()
        form = {"id": "uploaded", "caption": "a cyan block", "category": "square"}
        files = {"image": ("u.png", png, "image/png")}
        r = c.post(
            "/api/items", files=files, data=form, headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200 and r.json() == {"added": "uploaded", "items": n}, r.text
        top = c.post("/api/search", files={"image": ("q.png", png, "image/png")}).json()
        assert top["results"][0]["id"] == "uploaded"
    reopened = load_index(served["milvus_dir"])
    assert victim not in reopened and "uploaded" in reopened
    assert reopened.backend.row_count() == len(reopened) == n


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_rows_an_interrupted_add_left_are_never_returned(data, tmp_path, caplog):
    x, ids, items = data
    out = tmp_path / "index"
    opts = {"lite_path": out / "milvus.db"}
    build_index(
        x[:40], ids[:40], "FLAT", items=items[:40], backend="milvus", backend_options=opts
    ).save(out)
    index = load_index(out)
    # An add killed after its upsert, before the index files were saved: the row is in Milvus.
    index.backend.add_records(x[:3] * -1, ["orphan-0", "orphan-1", "orphan-2"], [None] * 3)
    with caplog.at_level("WARNING", logger="xmr.index.milvus_backend"):
        again = load_index(out)
    assert "43 rows, the index 40 ids" in caplog.text
    found = again.search(-x[:3], 5)
    assert all(len(row) == 5 and not any(h.id.startswith("orphan") for h in row) for row in found)
    # Re-running the add finishes the job: the rows are upserted again, not duplicated.
    again.add(x[:3] * -1, ["orphan-0", "orphan-1", "orphan-2"])
    again.save()
    final = load_index(out)
    assert len(final) == 43 == final.backend.row_count()
    assert final.search(-x[:1], 1)[0][0].id == "orphan-0"
