"""Two-stage search in the service: ``xmr serve --rerank`` rescores only the first-stage top K,
a request can opt out or ask for a smaller K, /api/info names the reranker, and image queries
are reranked against item captions only when every item has one."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("transformers")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from serve_index import TSV_ITEM  # noqa: E402
from test_rerank import COLORS, ColorMatcher  # noqa: E402
from xmr.serve import ServeSettings, create_app  # noqa: E402


def assert_error(r, status: int, code: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    return body


@pytest.fixture(scope="module")
def built(serve_index):
    return serve_index


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    from xmr.models.blip_itm import create_tiny_cross_encoder

    return create_tiny_cross_encoder(tmp_path_factory.mktemp("serve-blip") / "blip", "blip")


@pytest.fixture(scope="module")
def client(built, blip_dir):
    """The shared index (one item, from a TSV, has no caption) with a tiny BLIP from disk."""
    settings = ServeSettings(max_k=10, rerank=str(blip_dir), rerank_k=4)
    with TestClient(create_app(built["index_dir"], settings)) as c:
        yield c


def test_info_reports_the_reranker(client, built, blip_dir):
    info = client.get("/api/info").json()["rerank"]
    assert info["model"] == "blip:blip"  # the directory's name, not the server's path
    assert info["k"] == info["max_k"] == 4
    assert info["mode"] == "itm" and info["alpha"] == 1.0
    assert info["text_queries"] is True
    # The TSV item has an attribute but no caption: image->text reranking cannot be done.
    assert info["image_queries"] is False
    assert f"1 of the {built['n']} indexed items have no caption" in info["image_queries_reason"]


def test_reranking_moves_only_the_top_k(client, blip_dir):
    from xmr.models.cross_encoders import create_cross_encoder

    query = "a red circle"
    plain = client.get("/api/search", params={"q": query, "k": 8, "rerank": "false"}).json()
    assert plain["rerank"] == {
        "model": "blip:blip",
        "mode": "itm",
        "applied": False,
        "reason": "turned off by the request",
    }
    assert all("match_prob" not in r for r in plain["results"])
    body = client.get("/api/search", params={"q": query, "k": 8}).json()
    assert body["rerank"]["applied"] is True and body["rerank"]["k"] == 4
    first, out = plain["results"], body["results"]
    ids = [r["id"] for r in out]
    # The top 4 are the same items in the cross-encoder's order; the rest keep their places.
    assert sorted(ids[:4]) == sorted(r["id"] for r in first[:4])
    assert ids[4:] == [r["id"] for r in first[4:]]
    assert [r["reranked"] for r in out] == [True] * 4 + [False] * 4
    probs = [r["match_prob"] for r in out[:4]]
    assert probs == sorted(probs, reverse=True)
    assert [r["score"] for r in out[:4]] == probs  # itm mode ranks by the match probability
    assert all(r["match_prob"] is None for r in out[4:])
    by_id = {r["id"]: (rank, r["score"]) for rank, r in enumerate(first, 1)}
    for r in out:
        assert (r["first_stage_rank"], r["first_stage_score"]) == (
            by_id[r["id"]][0],
            pytest.approx(by_id[r["id"]][1], abs=1e-5),
        )
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)
    # The match probabilities are the cross-encoder's own on (item image, query).
    ce = create_cross_encoder(str(blip_dir), device="cpu")
    pics = [client.app.state.service.searcher.image_ref(i).open() for i in ids[:4]]
    assert probs == pytest.approx(ce.score(pics, [query] * 4).tolist(), abs=1e-5)


def test_request_depth_and_opt_out(client):
    body = client.post("/api/search", json={"q": "a green square", "k": 6, "rerank_k": 2}).json()
    assert body["rerank"]["k"] == 2
    assert [r["reranked"] for r in body["results"]] == [True, True] + [False] * 4
    # Fewer results than the reranking depth: the first stage still fetched rerank_k.
    plain = client.get("/api/search", params={"q": "green", "k": 4, "rerank": "no"}).json()
    two = client.get("/api/search", params={"q": "green", "k": 2}).json()["results"]
    assert len(two) == 2 and all(r["reranked"] for r in two)
    assert {r["id"] for r in two} <= {r["id"] for r in plain["results"]}
    off = client.post("/api/search", json={"q": "green", "rerank": False}).json()
    assert off["rerank"]["applied"] is False and "reranked" not in off["results"][0]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": "red", "rerank_k": "5"}, "rerank_k_too_large"),
        ({"q": "red", "rerank_k": "0"}, "bad_rerank_k"),
        ({"q": "red", "rerank_k": "two"}, "bad_rerank_k"),
        ({"q": "red", "rerank": "maybe"}, "bad_rerank"),
    ],
)
def test_bad_rerank_parameters(client, params, code):
    body = assert_error(client.get("/api/search", params=params), 400, code)
    assert body["error"]["field"] == code.removeprefix("bad_").removesuffix("_too_large")


def test_bad_rerank_json(client):
    assert_error(client.post("/api/search", json={"q": "red", "rerank": "x"}), 400, "bad_rerank")
    assert_error(client.post("/api/search", json={"q": "red", "rerank": 1}), 400, "bad_rerank")
    assert_error(
        client.post("/api/search", json={"q": "red", "rerank_k": 1.5}), 400, "bad_rerank_k"
    )


def test_image_queries_without_captions_are_refused_clearly(client, built):
    data = (built["images"] / "yellow-circle-0.jpg").read_bytes()
    files = {"image": ("q.jpg", data, "image/jpeg")}
    # By default the image query is answered by the first stage, and says why.
    body = client.post("/api/search", files=files, data={"k": "3"}).json()
    assert body["rerank"]["applied"] is False
    assert "have no caption" in body["rerank"]["reason"]
    assert body["results"][0]["id"] == "yellow-circle-0"
    # Asked for explicitly, it is an error that says what is missing.
    for extra in ({"rerank": "true"}, {"rerank_k": "2"}):
        r = client.post("/api/search", files=files, data={"k": "3", **extra})
        body = assert_error(r, 400, "rerank_unavailable")
        assert f"1 of the {built['n']} indexed items have no caption" in body["error"]["message"]
    r = client.post("/api/search", json={"item_id": TSV_ITEM, "rerank": True})
    assert_error(r, 400, "rerank_unavailable")


def test_a_service_without_reranker(built):
    with TestClient(create_app(built["index_dir"], ServeSettings(max_k=10))) as c:
        assert c.get("/api/info").json()["rerank"] is None
        body = c.get("/api/search", params={"q": "red", "rerank": "false"}).json()
        assert body["rerank"] is None and body["results"]
        for params in ({"q": "red", "rerank": "true"}, {"q": "red", "rerank_k": "3"}):
            body = assert_error(c.get("/api/search", params=params), 400, "no_reranker")
            assert "--rerank" in body["error"]["message"]


# --- a hand-made cross-encoder over an index where every item has a caption ---------------------


@pytest.fixture(scope="module")
def color_index(tmp_path_factory, tiny_clip):
    from test_rerank import build_color_index

    return build_color_index(tmp_path_factory.mktemp("serve-rerank-colors"), tiny_clip, n=9)


def test_cross_encoder_fixes_the_order_of_text_and_image_queries(color_index):
    matcher = ColorMatcher()
    settings = ServeSettings(rerank_k=6, rerank_mode="itm+sim", batch_wait_ms=0)
    with TestClient(create_app(color_index, settings, reranker=matcher)) as c:
        info = c.get("/api/info").json()["rerank"]
        assert info["model"] == "test:color" and info["mode"] == "itm+sim"
        assert info["text_queries"] and info["image_queries"]
        plain = c.get("/api/search", params={"q": "red", "k": 9, "rerank": "0"}).json()["results"]
        top = [r["id"] for r in plain[:6]]
        out = c.get("/api/search", params={"q": "red", "k": 9}).json()["results"]
        reds = [i for i in top if i.startswith("red")]
        assert reds, "the tiny model's first stage put no red item in the top 6"
        # The red items of the top 6 come first (in first-stage order), then the others.
        want = reds + [i for i in top if not i.startswith("red")]
        assert [r["id"] for r in out[:6]] == want
        assert [r["id"] for r in out[6:]] == [r["id"] for r in plain[6:]]
        # itm+sim: the match logit plus the first-stage similarity.
        for r in out[:6]:
            logit = 4.0 if r["id"].startswith("red") else -4.0
            assert r["score"] == pytest.approx(logit + r["first_stage_score"], abs=1e-5)
        assert len(matcher.seen) == 6  # only the top K were read by the cross-encoder
        assert all(text == "red" for _, text in matcher.seen)

        # An image query is reranked against the captions of its candidates.
        matcher.seen.clear()
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), COLORS["blue"]).save(buf, format="PNG")
        files = {"image": ("q.png", buf.getvalue(), "image/png")}
        body = c.post("/api/search", files=files, data={"k": "9", "rerank_k": "6"}).json()
        assert body["rerank"]["applied"] is True
        first = c.post("/api/search", files=files, data={"k": "9", "rerank": "off"}).json()
        top = [r["id"] for r in first["results"][:6]]
        blues = [i for i in top if i.startswith("blue")]
        want = blues + [i for i in top if not i.startswith("blue")]
        assert [r["id"] for r in body["results"][:6]] == want
        assert sorted(text for _, text in matcher.seen) == sorted(f"a {i[:-1]} thing" for i in top)
        assert {color for color, _ in matcher.seen} == {"blue"}

        # Query by example: the example's own image is the second stage's query.
        ex = c.post("/api/search", json={"item_id": "green1", "k": 8, "rerank_k": 4}).json()
        assert ex["rerank"]["applied"] is True and ex["rerank"]["k"] == 4
        assert "green1" not in [r["id"] for r in ex["results"]]
        head = [r["id"] for r in ex["results"][:4]]
        greens = [i for i in head if i.startswith("green")]
        assert head[: len(greens)] == greens
        calls = c.get("/api/info").json()["rerank"]["calls"]
        assert calls["calls"] >= 3 and calls["items"] >= 3


def test_concurrent_queries_share_cross_encoder_calls(color_index):
    """Queries submitted together are reranked in one batch function call (pairs of a kind and
    depth share the cross-encoder's forward passes); no timing is asserted, only the grouping."""
    import asyncio

    from xmr.search import SearchResult
    from xmr.serve.service import RerankJob

    matcher = ColorMatcher()
    calls = []

    class Counting(ColorMatcher):
        def logits(self, images, texts, batch_size=32):
            calls.append(len(texts))
            return matcher.logits(images, texts, batch_size)

    app = create_app(color_index, ServeSettings(rerank_k=3), reranker=Counting())
    svc = app.state.service
    ids = [f"{c}{i}" for i, c in enumerate(["red", "green", "blue"] * 2)]
    hits = [SearchResult(i, 1.0 - 0.1 * n, n + 1) for n, i in enumerate(ids)]
    rows = svc.searcher.rerank(["red", "blue", "green"], [hits] * 3, depth=[3, 3, 2])
    assert calls == [6, 2]  # the two depth-3 text queries in one call, the depth-2 one apart
    assert rows[0][0].id == "red0" and rows[1][0].id == "blue2"
    assert [r.score for r in rows[2][:2]] == sorted((r.score for r in rows[2][:2]), reverse=True)
    assert [r.first_stage_rank for r in rows[2][2:]] == [3, 4, 5, 6]

    async def many():
        return await asyncio.gather(
            *(svc.rerank_batcher.submit(RerankJob(q, hits, 3)) for q in ("red", "blue"))
        )

    calls.clear()
    out = asyncio.run(many())
    svc.close()
    assert [row[0].id for row in out] == ["red0", "blue2"]
    assert sum(calls) == 6 and svc.rerank_batcher.stats.items == 2


def test_serve_cli_wires_the_reranker(color_index, blip_dir, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    from xmr.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    argv = ["serve", str(color_index), "--rerank", str(blip_dir), "--rerank-k", "3"]
    assert main([*argv, "--rerank-mode", "itm+sim", "--rerank-alpha", "0.5"]) == 0
    assert "reranking the top 3 with blip:" in capsys.readouterr().err
    with TestClient(seen["app"]) as c:
        info = c.get("/api/info").json()["rerank"]
        assert info["k"] == 3 and info["mode"] == "itm+sim" and info["alpha"] == 0.5
        body = c.get("/api/search", params={"q": "a red thing", "k": 5}).json()
        assert [r["reranked"] for r in body["results"]] == [True] * 3 + [False] * 2
        probs = [r["match_prob"] for r in body["results"][:3]]
        assert all(0.0 <= p <= 1.0 for p in probs)
        # itm+sim with alpha 0.5: the match logit plus half the first-stage similarity.
        scores = [r["score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)
    assert main([*argv[:2], "--rerank", str(blip_dir), "--rerank-k", "0"]) == 2
    assert "--rerank-k must be at least 1" in capsys.readouterr().err
