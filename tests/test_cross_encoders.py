"""Cross-encoder backends: spec parsing, tiny BLIP / BLIP-2 saved and loaded back like a user's
checkpoint, and scores equal to transformers' own ITM forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from xmr.data.images import ImageRef  # noqa: E402
from xmr.errors import XmrError  # noqa: E402
from xmr.models.base import Encoder  # noqa: E402
from xmr.models.blip_itm import create_tiny_cross_encoder, tiny_vocab  # noqa: E402
from xmr.models.cross_encoders import (  # noqa: E402
    create_cross_encoder,
    list_cross_encoders,
    match_probability,
    parse_cross_encoder_spec,
)
from xmr.models.preprocess import ImagePreprocess  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    return {
        kind: create_tiny_cross_encoder(root / kind, kind, seed=1) for kind in ("blip", "blip2")
    }


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _images():
    red = Image.new("RGB", (40, 48), (230, 20, 20))
    blue = Image.new("RGB", (33, 30), (10, 20, 240))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8))
    return red, blue, noise


def test_spec_parsing(tiny_dirs, tmp_path):
    assert parse_cross_encoder_spec("blip2-itm-vit-g") == ("blip2", "Salesforce/blip2-itm-vit-g")
    assert parse_cross_encoder_spec("blip:org/some-model") == ("blip", "org/some-model")
    assert parse_cross_encoder_spec("Salesforce/blip-itm-large-flickr")[0] == "blip"
    assert parse_cross_encoder_spec("someone/blip2-finetuned")[0] == "blip2"
    for kind, path in tiny_dirs.items():
        assert parse_cross_encoder_spec(str(path)) == (kind, str(path))
        assert parse_cross_encoder_spec(f"hf:{path}") == (kind, str(path))
    assert "blip" in list_cross_encoders() and "blip2-itm-vit-g" in list_cross_encoders()
    with pytest.raises(XmrError, match="cannot tell the backend"):
        parse_cross_encoder_spec("org/clip-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(XmrError, match="not a cross-encoder directory"):
        parse_cross_encoder_spec(str(tmp_path))
    with pytest.raises(XmrError, match="unknown cross-encoder"):
        parse_cross_encoder_spec(str(tmp_path / "missing" / "dir"))


def test_saved_files_are_the_real_format(tiny_dirs):
    for kind, path in tiny_dirs.items():
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "processor_config.json"} <= names
        assert "tokenizer.json" in names or "vocab.txt" in names
        model_type = json.loads((path / "config.json").read_text())["model_type"]
        assert model_type == {"blip": "blip", "blip2": "blip-2"}[kind]


@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_scores_equal_transformers_itm_forward(tiny_dirs, kind):
    ce = create_cross_encoder(str(tiny_dirs[kind]), device="cpu")
    red, blue, noise = _images()
    images = [red, blue, red, noise, blue]
    texts = ["a red square", "blue", "a longer text about nothing at all", "noise?", "red"]
    logits = ce.logits(images, texts, batch_size=2)
    inputs = ce.processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        if kind == "blip":
            ref = ce.model(**inputs, use_itm_head=True).itm_score
        else:
            ref = ce.model(**inputs, use_image_text_matching_head=True).logits_per_image
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-5)
    probs = ce.score(images, texts, batch_size=3)
    np.testing.assert_allclose(probs, torch.softmax(ref, dim=1)[:, 1].numpy(), atol=1e-5)
    assert probs.dtype == np.float32 and probs.shape == (5,)
    # Pairs are scored independently of how they are batched.
    np.testing.assert_allclose(ce.score(images[3:4], texts[3:4]), probs[3:4], atol=1e-5)
    # A random model still distinguishes pairs (the test above would pass on constants too).
    assert np.ptp(logits[:, 1]) > 1e-4


def test_save_and_reload_gives_same_scores(tiny_dirs, tmp_path):
    ce = create_cross_encoder(f"hf:{tiny_dirs['blip']}", device="cpu")
    red, blue, _ = _images()
    before = ce.score([red, blue], ["red", "blue"])
    again = create_cross_encoder(str(ce.save(tmp_path / "copy")), device="cpu")
    np.testing.assert_allclose(again.score([red, blue], ["red", "blue"]), before, atol=1e-6)
    assert create_cross_encoder(ce) is ce


def test_errors_are_clear(tiny_dirs):
    ce = create_cross_encoder(str(tiny_dirs["blip"]), device="cpu")
    red, _, _ = _images()
    with pytest.raises(XmrError, match="aligned pairs"):
        ce.score([red], ["a", "b"])
    assert ce.score([], []).shape == (0,)
    with pytest.raises(XmrError):
        create_cross_encoder("blip:/no/such/dir")


def test_match_probability_is_softmax_column_one():
    logits = np.array([[0.0, 0.0], [1000.0, -1000.0], [-3.0, 2.0]])
    np.testing.assert_allclose(
        match_probability(logits), [0.5, 0.0, 1 / (1 + np.exp(-5.0))], atol=1e-7
    )


def test_tiny_vocab_spells_any_text():
    vocab = tiny_vocab(["shoe"])
    assert "shoe" in vocab and "##z" in vocab and len(set(vocab.values())) == len(vocab)


# ---- ITM fine-tuning --------------------------------------------------------------------------


class _ColorWords(Encoder):
    """A hand-made first stage: images and texts embedded by how red/blue they are. A real
    :class:`~xmr.models.base.Encoder`, so its images go through the encode pipeline as a
    model's do (hard-negative mining embeds them with ``xmr.encode.embed_image_refs``)."""

    spec, backend, embed_dim, context_length = "test:color-words", "test", 2, 8

    def __init__(self):
        self.model = torch.nn.Module()
        self.model.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.preprocess = ImagePreprocess(
            mode="resize", size=(8, 8), crop_size=None, mean=None, std=None
        )
        self.device = torch.device("cpu")

    def tokenize(self, texts):
        bags = [[("red" in t) + 0.1, ("blue" in t) + 0.1] for t in texts]
        return {"bags": torch.tensor(bags, dtype=torch.float32)}

    def text_features(self, tokens):
        return tokens["bags"]

    def image_features(self, pixel_values):
        return torch.stack([pixel_values[:, 0].mean((1, 2)), pixel_values[:, 2].mean((1, 2))], 1)


def color_split():
    """Two red and two blue noisy images; each item's training text names its color."""
    import io

    from xmr.data.dataset import Item, Split
    from xmr.data.images import ImageRef

    rng = np.random.default_rng(0)
    split = Split("train")
    for n in range(2):
        for color, rgb in (("red", (220, 20, 20)), ("blue", (10, 20, 240))):
            pixels = np.clip(np.array(rgb) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            split.items[f"{color}{n}"] = Item(f"{color}{n}", ImageRef(data=buf.getvalue()))
            split.pairs[f"{color}{n}"] = [f"a {color} thing"]
    return split


def test_hard_negatives_are_the_first_stage_top_non_matches():
    from xmr.train.itm import mine_hard_negatives

    red, blue, _ = (ImageRef(data=_png(im)) for im in _images())
    images = [red, blue, red]
    texts = ["red", "blue", "a red car", "blue sky"]
    positives = [(0, 0), (1, 1), (2, 2)]
    for_image, for_text = mine_hard_negatives(_ColorWords(), images, texts, positives, n=2)
    assert for_image[0] == [2, 1] or for_image[0] == [2, 3]  # the other red text first
    assert 0 not in for_image[0] and 1 not in for_image[1] and 2 not in for_image[2]
    assert for_text[0][0] == 2 and for_text[2][0] == 0  # the other red image is hardest
    assert for_text[3] == [1, 0] or for_text[3] == [1, 2]  # nothing matches "blue sky"


@pytest.fixture
def one_thread():
    # A model this small gains nothing from intra-op threads, and they stall when other
    # processes compete for the cores (25x slower on a loaded 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_itm_training_refuses_an_unwritable_out_dir_before_training(tmp_path):
    from xmr.errors import XmrError
    from xmr.train.itm import ItmTrainConfig, train_itm

    (tmp_path / "a_file").write_text("x")
    steps = []
    with pytest.raises(XmrError, match="a_file: exists and is not a directory"):
        train_itm(
            create_tiny_cross_encoder(tmp_path / "ce", "blip", words=["red", "blue", "thing"]),
            color_split(),
            config=ItmTrainConfig(steps=2, batch_size=2, log_every=1),
            out_dir=tmp_path / "a_file",
            log=steps.append,
        )
    assert steps == []  # refused before the first step, not when saving after the last


def test_itm_fine_tuning_learns_the_pairs_and_saves(tmp_path, one_thread):
    from xmr.train.itm import ItmTrainConfig, train_itm

    path = create_tiny_cross_encoder(tmp_path / "start", "blip", words=["red", "blue", "thing"])
    ce = create_cross_encoder(str(path), device="cpu")
    split = color_split()
    red, blue = (split.items[i].image.open() for i in ("red0", "blue0"))
    pairs = ([red, blue, red, blue], ["a red thing", "a blue thing", "a blue thing", "a red thing"])
    before = ce.score(*pairs)
    config = ItmTrainConfig(steps=150, batch_size=6, lr=5e-3, weight_decay=0.0)
    result = train_itm(
        ce, split, config=config, first_stage=_ColorWords(), out_dir=tmp_path / "out"
    )
    assert result.details["negatives"] == "first-stage" and len(result.losses) == 150
    assert result.trainer == "itm" and result.global_step == 150 and result.model is ce
    assert np.mean(result.losses[-10:]) < 0.1 < np.mean(result.losses[:10])
    after = ce.score(*pairs)
    assert abs(before[0] - before[2]) < 0.05  # untrained: no idea which pairs match
    assert after[0] > 0.9 and after[1] > 0.9 and after[2] < 0.1 and after[3] < 0.1
    again = create_cross_encoder(str(tmp_path / "out"), device="cpu")
    np.testing.assert_allclose(again.score(*pairs), after, atol=1e-5)
    meta = json.loads((tmp_path / "out" / "itm_train.json").read_text())
    assert meta["config"]["steps"] == 150 and meta["n_pairs"] == 4
    # The trained cross-encoder fixes a wrong first stage within the top 3 (items as lookup).
    from xmr.rerank import rerank

    first = [
        {"id": i, "score": 0.9 - 0.1 * n} for n, i in enumerate(["blue0", "blue1", "red0", "red1"])
    ]
    out = rerank("a red thing", first, again, lookup=split.items, k=3)
    ids = [r["id"] for r in out]
    assert ids[0] == "red0" and set(ids[1:3]) == {"blue0", "blue1"} and ids[3] == "red1"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_cuda_scores_match_the_cpu(tiny_dirs, kind):
    red, blue, noise = _images()
    images, texts = [red, blue, noise, red], ["red", "a blue thing", "noise", "blue"]
    cpu = create_cross_encoder(str(tiny_dirs[kind]), device="cpu").logits(images, texts)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 5e-2)):
        gpu = create_cross_encoder(str(tiny_dirs[kind]), device="cuda", precision=precision)
        assert gpu.device.startswith("cuda") and next(gpu.model.parameters()).is_cuda
        np.testing.assert_allclose(gpu.logits(images, texts, batch_size=3), cpu, atol=tol)


def _color_tianchi(root):
    """tianchi-format train and valid splits: noisy red and blue images, queries naming colors."""
    rng = np.random.default_rng(1)
    colors = {"red": (220, 20, 20), "blue": (10, 20, 240)}
    records = []
    for split in ("train", "valid"):
        (root / f"{split}_images").mkdir(parents=True)
        for n in range(4):
            color = ("red", "blue")[n % 2]
            iid = f"{split[0]}{n}"
            pixels = np.clip(np.array(colors[color]) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"{split}_images" / f"{iid}.png")
            if split == "train":
                text = f"a {color} thing"
                records.append(
                    {"query_id": n, "query_text": text, "image_id": iid, "text_input": [color]}
                )
        if split == "valid":
            for q, color in enumerate(("red", "blue")):
                ids = {f"v{n}": color for n in range(4) if ("red", "blue")[n % 2] == color}
                records.append({"query_id": q, "query_text": f"a {color} thing", "item_ids": ids})
    lines = "\n".join(json.dumps(r) for r in records if "item_ids" not in r)
    (root / "MR_train_queries_with_captions.json").write_text(lines + "\n")
    valid = "\n".join(json.dumps(r) for r in records if "item_ids" in r)
    (root / "MR_valid_queries_with_captions_standard_simple.jsonl").write_text(valid + "\n")
    return root


def test_xmr_train_cross_encoder_command(tmp_path, one_thread, capsys, tiny_clip):
    from xmr.cli import main

    data = _color_tianchi(tmp_path / "data")
    start = create_tiny_cross_encoder(tmp_path / "start", "blip", words=["red", "blue", "thing"])
    clip = tiny_clip
    out = tmp_path / "itm"
    args = ["train", "--cross-encoder", str(start), "--model", f"hf:{clip}", "--data", str(data)]
    args += ["--out", str(out), "--device", "cpu", "--rerank-k", "4", "--json"]
    assert main([*args, "steps=150", "batch_size=6", "lr=5e-3", "weight_decay=0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["negatives"] == "first-stage" and summary["steps"] == 150
    # Validation reranks the first stage's top 4 (the whole gallery): the trained model sorts it.
    assert summary["valid"]["t2i/R@1"] == 1.0
    assert "first_stage/t2i/R@1" in summary["valid"]
    assert (out / "itm_train.json").is_file() and create_cross_encoder(str(out), device="cpu")
    assert main([*args, "bogus=1"]) == 2
    assert "unknown ITM training option" in capsys.readouterr().err
