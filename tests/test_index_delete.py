"""``xmr index delete`` on the FAISS backend (Flat, flat-coded PQ, IVF, HNSW): the index after a
delete answers as one built without those items, ids / items / vectors stay aligned through a
save and a load, and the service's ``DELETE /api/items/{id}`` is behind the token and all or
nothing."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("faiss")

from xmr.errors import XmrError  # noqa: E402
from xmr.index import build_index, exact_search, load_index  # noqa: E402

N = 1200


def vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    x = vectors(N)
    ids = [f"i{i}" for i in range(N)]
    items = [{"id": i, "category": "even" if n % 2 == 0 else "odd"} for n, i in enumerate(ids)]
    drop = [f"i{i}" for i in range(0, N, 7)] + ["i1199"]
    keep = [n for n in range(N) if f"i{n}" not in set(drop)]
    return x, ids, items, drop, keep


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW16", "SQ8"])
def test_a_delete_answers_as_a_build_without_the_items(tmp_path, data, spec):
    x, ids, items, drop, keep = data
    index = build_index(x, ids, spec, items=items, nprobe=16)
    assert index.remove(drop) == drop
    index.save(tmp_path / "index")
    again = load_index(tmp_path / "index")
    assert again.ids == [ids[n] for n in keep] and len(again) == len(keep)
    assert [r["id"] for r in again.items] == again.ids and again.manifest["count"] == len(keep)
    # Every remaining id still finds its own vector: the positions were renumbered in step.
    for n in keep[::37]:
        tol = 0.05 if spec == "SQ8" else 1e-6
        np.testing.assert_allclose(again.vector(ids[n]), x[n], atol=tol)
    q = vectors(20, seed=1)
    got = [[h.id for h in row] for row in again.search(q, 10)]
    _, exact = exact_search(x[keep], q, 10)
    want = [[ids[keep[p]] for p in row] for row in exact]
    if spec in ("Flat", "IVF16,Flat"):  # exact (IVF: every list probed)
        assert got == want
    elif spec == "HNSW16":
        overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
        assert overlap > 0.9
    assert not set(drop) & {i for row in got for i in row}
    odd = again.search(q, 5, category="odd")
    assert all(again.item(h.id)["category"] == "odd" for row in odd for h in row)


def test_compressed_non_ivf_types_are_refused(data):
    x, ids, _, drop, _ = data
    index = build_index(x, ids, "HNSW16,SQ8")
    with pytest.raises(XmrError, match="not supported"):
        index.remove(drop)
    assert len(index) == N


def test_unknown_ids_delete_nothing_unless_missing_ok(data):
    x, ids, _, _, _ = data
    index = build_index(x[:10], ids[:10], "Flat")
    with pytest.raises(XmrError, match="nothing deleted"):
        index.remove(["i1", "nope"])
    assert len(index) == 10
    assert index.remove(["i1", "nope"], missing_ok=True) == ["i1"] and "i1" not in index


def test_cli_delete_on_a_faiss_index(tmp_path, data, capsys):
    from xmr.cli import main

    x, ids, items, _, _ = data
    build_index(x[:30], ids[:30], "Flat", items=items[:30]).save(tmp_path / "index")
    capsys.readouterr()
    assert main(["index", "delete", str(tmp_path / "index"), "i3", "i4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"] == ["i3", "i4"] and out["not_found"] == [] and out["count"] == 28
    assert main(["index", "delete", str(tmp_path / "index"), "i3"]) == 2
    assert "not in the index" in capsys.readouterr().err
    assert len(load_index(tmp_path / "index")) == 28


def test_service_delete_is_behind_the_token_and_all_or_nothing(serve_index, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xmr.serve import ServeSettings, create_app

    built = serve_index
    index_dir = tmp_path / "index"
    shutil.copytree(built["index_dir"], index_dir)
    token = "delete-token"
    headers = {"authorization": f"Bearer {token}"}
    victim = built["ids"][0]
    with TestClient(create_app(index_dir, ServeSettings())) as c:
        assert c.delete(f"/api/items/{victim}").json()["error"]["code"] == "read_only"
    app = create_app(index_dir, ServeSettings(allow_writes=True, token=token))
    svc = app.state.service
    with TestClient(app) as c:
        n = c.get("/api/health").json()["items"]
        assert (
            c.delete(f"/api/items/{victim}", headers={"authorization": "Bearer x"}).status_code
            == 403
        )
        real_save = svc.searcher.index.backend.save

        def full_disk(directory):
            raise OSError(errno.ENOSPC, "No space left on device", "index.faiss")

        svc.searcher.index.backend.save = full_disk
        r = c.delete(f"/api/items/{victim}", headers=headers)
        assert r.status_code == 500 and r.json()["error"]["code"] == "write_failed"
        assert c.get(f"/api/items/{victim}").status_code == 200  # put back as it was
        assert c.get("/api/health").json()["items"] == n
        svc.searcher.index.backend.save = real_save
        r = c.delete(f"/api/items/{victim}", headers=headers)
        assert r.status_code == 200 and r.json() == {"deleted": victim, "items": n - 1}
        assert c.get(f"/api/items/{victim}").status_code == 404
        assert c.delete(f"/api/items/{victim}", headers=headers).status_code == 404
    assert victim not in load_index(index_dir) and len(load_index(index_dir)) == n - 1
