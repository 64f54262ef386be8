"""``xmr caption --model``: a tiny random BLIP captioning model saved with ``save_pretrained``,
loaded back through the user's path (a local directory, and ``hf:DIR``)."""

from __future__ import annotations

import json

from test_caption import make_evalscope
from xmr.cli import main
from xmr.data.readers import load_dataset
from xmr.models.caption_hf import HFCaptioner, create_tiny_blip_captioner
from xmr.models.captioners import GenerationParams, create_captioner, list_captioners
from xmr.workflows.caption import caption_dataset


def test_tiny_blip_captions_batched_and_cached(tmp_path):
    model_dir = create_tiny_blip_captioner(tmp_path / "blip")
    assert {"api", "hf"} <= set(list_captioners())
    captioner = create_captioner(
        str(model_dir), params=GenerationParams(max_tokens=8), batch_size=3
    )
    assert isinstance(captioner, HFCaptioner) and captioner.prefix_model
    assert captioner.device == "cpu" or captioner.device.startswith("cuda")
    data = make_evalscope(tmp_path / "data", 5)
    summary = caption_dataset(data, tmp_path / "out", captioner, progress=False)
    assert summary.stats["captioned"] == 5 and summary.stats["failed"] == 0
    records = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").open()]
    assert {r["model"] for r in records} == {f"hf:{model_dir}"}
    assert all(r["caption"].strip() and r["error"] is None for r in records)
    assert all(0 < r["usage"]["completion_tokens"] <= 9 for r in records)
    beir = load_dataset(tmp_path / "out" / "retrieval_data", "beir").split()
    assert {iid: it.captions[0] for iid, it in beir.items.items()} == {
        r["id"]: r["caption"] for r in records
    }
    # the same model through the CLI and an hf: spec: every caption is a cache hit
    rc = main(
        [
            "caption",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "out"),
            "--model",
            f"hf:{model_dir}",
            "--max-tokens",
            "8",
            "--json",
        ]
    )
    assert rc == 0
    again = json.loads((tmp_path / "out" / "image_caption.json").read_text())
    assert again["cached"] == 5 and again["requests"] == 0


def test_tiny_llava_image_text_to_text_batched_equals_single(tmp_path):
    from PIL import Image

    from xmr.data.images import ImageRef
    from xmr.models.caption_hf import create_tiny_llava_captioner
    from xmr.models.captioners import CaptionRequest

    model_dir = create_tiny_llava_captioner(tmp_path / "llava")
    params = GenerationParams(max_tokens=6)
    images = []
    for colour, size in (("red", (40, 30)), ("blue", (20, 50)), ("green", (33, 33))):
        path = tmp_path / f"{colour}.png"
        Image.new("RGB", size, colour).save(path)
        images.append(ImageRef(path=str(path)))
    # prompts of different lengths, so a batch is padded (on the left)
    requests = [
        CaptionRequest("a", "describe the image", images[0]),
        CaptionRequest("b", "describe", images[1]),
        CaptionRequest("c", "describe this picture a", images[2]),
    ]
    batched, single = [], []
    create_captioner(f"hf:{model_dir}", params=params, batch_size=3).run(requests, batched.append)
    create_captioner(model_dir, params=params, batch_size=1).run(requests, single.append)
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.ok and r.text for r in batched)
    assert [r.usage["prompt_tokens"] for r in batched] == [r.usage["prompt_tokens"] for r in single]
    # text-only requests (translation) go through the chat template without an image
    texts = []
    create_captioner(model_dir, params=params).run(
        [CaptionRequest("t", "translate the text into english")], texts.append
    )
    assert texts[0].ok and texts[0].usage["prompt_tokens"] > 0
    # a BLIP captioner says it cannot answer text-only requests (a failure, not a crash)
    blip = create_captioner(create_tiny_blip_captioner(tmp_path / "blip"), params=params)
    refused = []
    blip.run([CaptionRequest("t", "translate")], refused.append)
    assert refused[0].error == "a BLIP captioner cannot answer text-only requests"
