"""mPLUG (seed 002) as a cross-encoder: ModelScope's layout, its ITM forward, its pipeline call."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

import xmr  # noqa: E402
from xmr.cli import main  # noqa: E402
from xmr.errors import DataError, XmrError  # noqa: E402
from xmr.models.cross_encoders import create_cross_encoder, parse_cross_encoder_spec  # noqa: E402
from xmr.models.mplug.tiny import create_tiny_mplug  # noqa: E402

WORDS = ["red", "blue", "thing", "square", "two", "young", "guys"]
MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return create_tiny_mplug(tmp_path_factory.mktemp("mplug") / "model", words=WORDS)


def _images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (37, 51, 3), dtype=np.uint8)),
        Image.new("RGB", (20, 30), (220, 20, 20)),
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).convert("L"),
    ]


# ---- the on-disk layout --------------------------------------------------------------------


def test_tiny_model_is_modelscope_layout_and_loads_by_directory(tiny):
    assert sorted(p.name for p in tiny.iterdir()) == [
        "config.yaml",
        "config_bert.json",
        "configuration.json",
        "pytorch_model.bin",
        "vocab.txt",
    ]
    card = json.loads((tiny / "configuration.json").read_text())
    assert card["task"] == "image-text-retrieval" and card["model"]["type"] == "mplug"
    raw = torch.load(tiny / "pytorch_model.bin", weights_only=True)
    assert set(raw) == {"model"}  # as mPLUG's training script saves it
    keys = raw["model"]
    assert "visual_encoder.visual.conv1.weight" in keys and "itm_head.weight" in keys
    assert "fusion_encoder.encoder.layer.0.crossattention.self.key.weight" in keys  # never run
    assert parse_cross_encoder_spec(str(tiny)) == ("mplug", str(tiny))
    assert parse_cross_encoder_spec(f"mplug:{tiny}") == ("mplug", str(tiny))
    ce = create_cross_encoder(str(tiny), device="cpu")
    assert ce.spec == f"mplug:{tiny.resolve()}"
    assert ce.max_text_tokens == 25 and ce.image_res == 28
    # Only what the score path cannot read is left: projections, queues, the unused layer, ...
    assert "itm_head.weight" not in ce.unused_keys and "image_queue" in ce.unused_keys
    assert not any(k.startswith("fusion_encoder.encoder.layer.1.") for k in ce.unused_keys)


# ---- the forward pass, computed by hand from the weights file --------------------------------


def _ln(x, sd, p, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _lin(x, sd, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _attend(q, k, v, heads, mask):
    b, lq, d = q.shape
    hs = d // heads
    q, k, v = (t.view(b, -1, heads, hs).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hs) + mask, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, lq, d)


def _bert_attention(x, ctx, mask, sd, p, heads, eps=1e-12):
    out = _attend(_lin(x, sd, p + ".self.query"), _lin(ctx, sd, p + ".self.key"),
                  _lin(ctx, sd, p + ".self.value"), heads, mask)  # fmt: skip
    return _ln(_lin(out, sd, p + ".output.dense") + x, sd, p + ".output.LayerNorm", eps)


def _bert_ffn(x, sd, p, eps=1e-12):
    h = torch.nn.functional.gelu(_lin(x, sd, p + ".intermediate.dense"))
    return _ln(_lin(h, sd, p + ".output.dense") + x, sd, p + ".output.LayerNorm", eps)


def _hand_logits(model_dir, image, text):
    """ModelScope's MPlugForImageTextRetrieval.forward(train=False) for one pair, from
    pytorch_model.bin with plain tensor algebra (ModelScope's own preprocessing: 25 tokens
    padded to max_length, PIL bicubic resize, CLIP normalisation)."""
    from transformers import BertTokenizer

    bert = json.loads((model_dir / "config_bert.json").read_text())
    sd = torch.load(model_dir / "pytorch_model.bin", weights_only=True)["model"]
    heads = bert["num_attention_heads"]
    x = np.asarray(image.convert("RGB").resize((28, 28), Image.BICUBIC), np.float32) / 255.0
    x = torch.from_numpy(((x - MEAN) / STD).transpose(2, 0, 1))[None]
    # CLIP ViT, ln_post, no projection.
    v = "visual_encoder.visual."
    x = torch.nn.functional.conv2d(x, sd[v + "conv1.weight"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "class_embedding"].expand(1, 1, -1), x], dim=1)
    x = _ln(x + sd[v + "positional_embedding"], sd, v + "ln_pre", 1e-5)
    blocks = {k.split(".")[4] for k in sd if k.startswith(v + "transformer.resblocks.")}
    width = x.shape[-1]
    for n in sorted(blocks, key=int):
        p = f"{v}transformer.resblocks.{n}."
        h = _ln(x, sd, p + "ln_1", 1e-5)
        qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, val = qkv.split(width, dim=-1)
        a = _attend(q, k, val, width // 64, 0.0)
        x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = _lin(_ln(x, sd, p + "ln_2", 1e-5), sd, p + "mlp.c_fc")
        x = x + _lin(h * torch.sigmoid(1.702 * h), sd, p + "mlp.c_proj")
    image_states = _ln(
        _lin(_ln(x, sd, v + "ln_post", 1e-5), sd, "visn_fc"), sd, "visn_layer_norm", 1e-12
    )
    # BERT text encoder.
    tok = BertTokenizer(str(model_dir / "vocab.txt"))
    enc = tok(
        text.lower(), padding="max_length", truncation=True, max_length=25, return_tensors="pt"
    )
    ids, att = enc["input_ids"], enc["attention_mask"]
    mask = (1.0 - att[:, None, None, :].float()) * -10000.0
    e = "text_encoder.embeddings."
    t = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][: ids.shape[1]]
    t = _ln(t + sd[e + "token_type_embeddings.weight"][0], sd, e + "LayerNorm", 1e-12)
    for n in range(bert["text_encoder_layers"]):
        p = f"text_encoder.encoder.layer.{n}"
        t = _bert_ffn(_bert_attention(t, t, mask, sd, p + ".attention", heads), sd, p)
    # Fusion: layers start.. of num_hidden_layers; every stride_layer-th (not the first) skips.
    start = bert["num_hidden_layers"] - bert["fusion_layers"]
    zeros = torch.zeros(1, 1, 1, image_states.shape[1])
    for i in range(start, bert["num_hidden_layers"]):
        p = f"fusion_encoder.encoder.layer.{i}"
        if i - start != 0 and (i - start) % bert["stride_layer"] == 0:
            joint = torch.cat([image_states, t], dim=1)
            joint_mask = torch.cat([zeros, mask], dim=3)
            joint = _bert_ffn(
                _bert_attention(joint, joint, joint_mask, sd, p + ".attention", heads), sd, p
            )
            image_states = image_states + joint[:, : image_states.shape[1]]
            t = joint[:, image_states.shape[1] :]
        else:
            t = _bert_attention(t, t, mask, sd, p + ".attention", heads)
            t = _bert_attention(t, image_states, zeros, sd, p + ".crossattention", heads)
            t = _bert_ffn(t, sd, p)
    return _lin(t[:, 0], sd, "itm_head")[0]


def test_scores_equal_a_hand_computed_forward_of_the_weights(tiny):
    ce = create_cross_encoder(f"mplug:{tiny}", device="cpu")
    images = _images()
    texts = ["A red square", "two young guys with a thing that is much longer than others", "x"]
    ours = ce.logits(images, texts, batch_size=2)
    want = np.stack(
        [_hand_logits(tiny, im, t).numpy() for im, t in zip(images, texts, strict=True)]
    )
    np.testing.assert_allclose(ours, want, atol=2e-5)
    assert len({round(float(v), 4) for v in ours[:, 1]}) == 3  # the pairs are told apart
    probs = ce.score(images, texts)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(want[:, 0] - want[:, 1])), atol=1e-5)
    # Batching, padding and a repeated image give the same numbers.
    one_by_one = np.concatenate([ce.logits([im], [t]) for im, t in zip(images, texts, strict=True)])
    np.testing.assert_allclose(one_by_one, ours, atol=1e-5)
    same = ce.logits([images[0]] * 2, ["a red square", "blue"])
    np.testing.assert_allclose(same[0], ours[0], atol=1e-5)


def test_modelscope_own_forward_gives_the_same_scores(tmp_path):
    """Where ModelScope's mPLUG code imports (it needs timm, torchvision and transformers 4),
    its own model on the same files gives the same probabilities. ModelScope's CLIP wrapper
    hard-codes a 1024-wide ViT-L-14 position table, hence the wider vision tower here."""
    mplug = pytest.importorskip("modelscope.models.multi_modal.mplug")
    path = create_tiny_mplug(
        tmp_path / "m", words=WORDS, vision_width=1024, fusion_layers=3, stride_layer=2
    )
    theirs_model = mplug.MPlug.from_pretrained(str(path), task="image-text-retrieval").eval()
    ce = create_cross_encoder(f"mplug:{path}", device="cpu")
    images, texts = _images(), ["a red square", "two young guys", "x"]
    for im, t in zip(images, texts, strict=True):
        pixels = ce.pixel_values([im]).cpu()
        q = theirs_model.tokenizer(
            t.lower(), padding="max_length", truncation=True, max_length=25, return_tensors="pt"
        )
        with torch.no_grad():
            theirs = theirs_model(pixels, q, train=False)[0]
        assert float(ce.score([im], [t])[0]) == pytest.approx(float(theirs[1]), abs=1e-5)


# ---- bad directories --------------------------------------------------------------------------


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_layouts_name_the_file_and_field(tiny, tmp_path):
    import yaml

    with pytest.raises(XmrError, match="not a directory"):
        create_cross_encoder(f"mplug:{tmp_path / 'nope'}", device="cpu")
    bad = _copy(tiny, tmp_path / "no_weights")
    (bad / "pytorch_model.bin").unlink()
    with pytest.raises(DataError, match=r"pytorch_model\.bin: missing file"):
        create_cross_encoder(f"mplug:{bad}", device="cpu")
    bad = _copy(tiny, tmp_path / "garbage")
    (bad / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a torch checkpoint"):
        create_cross_encoder(f"mplug:{bad}", device="cpu")
    bad = _copy(tiny, tmp_path / "caption")
    card = json.loads((bad / "configuration.json").read_text())
    (bad / "configuration.json").write_text(json.dumps({**card, "task": "image-captioning"}))
    with pytest.raises(XmrError, match="image-captioning.*matching head"):
        create_cross_encoder(str(bad), device="cpu")
    bad = _copy(tiny, tmp_path / "width")
    settings = yaml.safe_load((bad / "config.yaml").read_text())
    (bad / "config.yaml").write_text(
        yaml.safe_dump({**settings, "clip_vision_width": 96, "vision_width": 96})
    )
    with pytest.raises(DataError, match=r"config\.yaml, field 'clip_vision_width'"):
        create_cross_encoder(str(bad), device="cpu")
    bad = _copy(tiny, tmp_path / "shape")
    (bad / "config.yaml").write_text(yaml.safe_dump({**settings, "image_res": 42}))
    with pytest.raises(DataError, match="positional_embedding' has shape"):
        create_cross_encoder(str(bad), device="cpu")
    bad = _copy(tiny, tmp_path / "missing")
    state = torch.load(bad / "pytorch_model.bin", weights_only=True)
    del state["model"]["itm_head.bias"]
    torch.save(state, bad / "pytorch_model.bin")
    with pytest.raises(DataError, match="lacks weights the ITM score needs: itm_head.bias"):
        create_cross_encoder(str(bad), device="cpu")
    bad = _copy(tiny, tmp_path / "bert")
    bert = json.loads((bad / "config_bert.json").read_text())
    del bert["fusion_layers"]
    (bad / "config_bert.json").write_text(json.dumps(bert))
    with pytest.raises(DataError, match=r"config_bert\.json, field 'fusion_layers': missing"):
        create_cross_encoder(str(bad), device="cpu")
    (bad / "configuration.json").unlink()  # no longer a ModelScope directory at all
    with pytest.raises(XmrError, match="not a cross-encoder directory"):
        create_cross_encoder(str(bad), device="cpu")


def test_save_keeps_modelscope_layout_and_the_unused_weights(tiny, tmp_path):
    ce = create_cross_encoder(str(tiny), device="cpu")
    with torch.no_grad():
        ce.model.itm_head.bias.add_(torch.tensor([-1.0, 1.0]))
    images, texts = _images(), ["red", "blue", "a thing"]
    before = ce.logits(images, texts)
    out = ce.save(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny.iterdir())
    again = create_cross_encoder(str(out), device="cpu")
    np.testing.assert_allclose(again.logits(images, texts), before, atol=1e-6)
    assert again.unused_keys == ce.unused_keys
    original = create_cross_encoder(str(tiny), device="cpu").logits(images, texts)
    np.testing.assert_allclose(before - original, [[-1.0, 1.0]] * 3, atol=1e-5)


# ---- the pipeline, as seed 002 calls it -----------------------------------------------------


class _ImageServer:
    """Loopback HTTP server: /ok.png is an image, anything else a 404."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/ok.png":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_pipeline_takes_the_seed_call_an_image_url_and_question(tiny, tmp_path):
    import io
    import socket

    image = _images()[0]
    path = tmp_path / "pair.png"
    image.save(path)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    question = "Two young guys with shaggy hair look at their hands."
    scorer = xmr.pipeline("image-text-retrieval", model=f"mplug:{tiny}", device="cpu")
    ce = create_cross_encoder(str(tiny), device="cpu")
    want = float(ce.score([Image.open(path).convert("RGB")], [question])[0])
    with _ImageServer(buf.getvalue()) as server:
        result = scorer({"image": f"{server.url}/ok.png", "question": question})
        assert result["text"] == question and "similarity" not in result
        assert result["match_prob"] == pytest.approx(want, abs=1e-6)
        assert result["scores"] == pytest.approx([1 - want, want], abs=1e-6)
        with pytest.raises(
            XmrError, match=r"cannot fetch image .*/missing\.jpg: the server answered 404"
        ):
            scorer({"image": f"{server.url}/missing.jpg", "question": question})
    local = scorer({"image": str(path), "text": [question, "red"]})
    assert [r["text"] for r in local] == [question, "red"]
    assert local[0]["match_prob"] == pytest.approx(want, abs=1e-6)
    with socket.socket() as s:  # a port nobody listens on: the network refuses
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(
        XmrError, match=r"cannot fetch image http://127\.0\.0\.1:\d+/x\.jpg: .*refused"
    ):
        scorer({"image": f"http://127.0.0.1:{closed}/x.jpg", "question": question})


# ---- the CLI: model tiny, similarity, rerank, train ------------------------------------------


def test_cli_tiny_and_similarity(tmp_path, capsys, tiny_clip):
    out = tmp_path / "mp"
    assert main(["model", "tiny", "--family", "mplug", str(out)]) == 0
    assert "mplug:" in capsys.readouterr().out
    image = tmp_path / "x.png"
    _images()[1].save(image)
    ce = create_cross_encoder(str(out), device="cpu")
    texts = ["a red thing", "blue"]
    want = ce.score([Image.open(image).convert("RGB")] * 2, texts)
    args = ["similarity", "--cross-encoder", f"mplug:{out}", "--device", "cpu", "--json"]
    assert main([*args, str(image), *texts]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert [s["text"] for s in scores] == texts and set(scores[0]) == {
        "text",
        "match_prob",
        "scores",
    }
    np.testing.assert_allclose([s["match_prob"] for s in scores], want, atol=1e-6)
    clip = tiny_clip
    assert main([*args, "--model", f"hf:{clip}", str(image), *texts]) == 0
    both = json.loads(capsys.readouterr().out)["scores"]
    assert set(both[0]) == {"text", "similarity", "match_prob"}
    np.testing.assert_allclose([s["match_prob"] for s in both], want, atol=1e-6)
    assert (
        main(["similarity", "--cross-encoder", str(out), "--device", "cpu", str(image), "red"]) == 0
    )
    red = float(ce.score([Image.open(image).convert("RGB")], ["red"])[0])
    assert capsys.readouterr().out.split() == ["match_prob", "text", f"{red:.4f}", "red"]


def test_cli_search_reranks_with_mplug(tmp_path, capsys, tiny_clip):
    pytest.importorskip("faiss")
    from test_rerank import build_color_index

    (tmp_path / "idx").mkdir()
    index = build_color_index(tmp_path / "idx", tiny_clip)
    mp = create_tiny_mplug(tmp_path / "mp", words=["red", "green", "blue", "thing"])
    base = ["search", str(index), "a red thing", "-k", "6", "--json", "--device", "cpu"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)["results"]
    assert main([*base, "--rerank", f"mplug:{mp}", "--rerank-k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    assert sorted(r["id"] for r in out[:4]) == sorted(r["id"] for r in plain[:4])
    assert [r["id"] for r in out[4:]] == [r["id"] for r in plain[4:]]
    probs = [r["match_prob"] for r in out[:4]]
    assert probs == sorted(probs, reverse=True) and out[4]["match_prob"] is None
    ce = create_cross_encoder(str(mp), device="cpu")
    shown = [Image.open(r["image"]["path"]).convert("RGB") for r in out[:4]]
    np.testing.assert_allclose(probs, ce.score(shown, ["a red thing"] * 4), atol=1e-5)


def test_itm_training_with_hard_negatives_learns_and_saves(tmp_path):
    from test_cross_encoders import _ColorWords, color_split
    from xmr.train.itm import ItmTrainConfig, train_itm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = create_tiny_mplug(tmp_path / "start", words=["red", "blue", "thing"])
        ce = create_cross_encoder(str(start), device="cpu")
        split = color_split()
        red, blue = (split.items[i].image.open() for i in ("red0", "blue0"))
        pairs = (
            [red, blue, red, blue],
            ["a red thing", "a blue thing", "a blue thing", "a red thing"],
        )
        config = ItmTrainConfig(steps=60, batch_size=4, lr=5e-3, weight_decay=0.0, warmup_steps=5)
        result = train_itm(
            ce, split, config=config, first_stage=_ColorWords(), out_dir=tmp_path / "out"
        )
    finally:
        torch.set_num_threads(threads)
    assert result.details["negatives"] == "first-stage" and len(result.losses) == 60
    assert np.mean(result.losses[-10:]) < 0.2 < np.mean(result.losses[:10])
    after = ce.score(*pairs)
    assert after[0] > 0.8 and after[1] > 0.8 and after[2] < 0.2 and after[3] < 0.2
    again = create_cross_encoder(str(tmp_path / "out"), device="cpu")
    np.testing.assert_allclose(again.score(*pairs), after, atol=1e-5)
    assert (tmp_path / "out" / "configuration.json").is_file()
    assert (tmp_path / "out" / "itm_train.json").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_match_the_cpu(tiny):
    images, texts = _images(), ["red", "a blue thing", "noise"]
    cpu = create_cross_encoder(str(tiny), device="cpu").logits(images, texts)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 5e-2)):
        gpu = create_cross_encoder(str(tiny), device="cuda", precision=precision)
        assert next(gpu.model.parameters()).is_cuda
        np.testing.assert_allclose(gpu.logits(images, texts, batch_size=2), cpu, atol=tol)


def test_checkpoint_wrappings_modelscope_accepts_load_alike(tiny, tmp_path):
    """A bare state dict, one under "module", "model."-prefixed keys, torch's legacy format."""
    images, texts = _images(), ["red", "blue", "a thing"]
    want = create_cross_encoder(str(tiny), device="cpu").logits(images, texts)
    state = torch.load(tiny / "pytorch_model.bin", weights_only=True)["model"]
    variants = {
        "bare": (state, True),
        "module": ({"module": {f"model.{k}": v for k, v in state.items()}}, True),
        "legacy": ({"model": state}, False),
    }
    for name, (obj, zip_format) in variants.items():
        d = _copy(tiny, tmp_path / name)
        (d / "README.md").write_text("card\n")
        torch.save(obj, d / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
        ce = create_cross_encoder(str(d), device="cpu")
        np.testing.assert_allclose(ce.logits(images, texts), want, atol=1e-6, err_msg=name)
    saved = ce.save(tmp_path / "resaved")
    assert (saved / "README.md").read_text() == "card\n"  # the rest of the directory travels
