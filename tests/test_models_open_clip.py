"""The open_clip backend, on a tiny architecture saved as a checkpoint and as a hub-layout dir.

Compatibility workaround (kept here, never in the library): open_clip imports torchvision at
import time for its own transforms, and on machines whose only torchvision is a CUDA build that
cannot load its compiled ops with the CPU torch, that import fails. xmr does not use those
transforms (it runs its own ``ImagePreprocess`` built from the weights' preprocess_cfg), so when
the real torchvision cannot be imported this module puts a stub ``torchvision`` (transforms and
``ops.misc.FrozenBatchNorm2d`` names that raise if ever used) in ``sys.modules`` for the duration
of these tests only, and removes it and open_clip afterwards. Without open_clip_torch installed
(it is not part of the test extra, since it would pull torchvision) the tests skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from xmr.errors import XmrError  # noqa: E402

torch.set_num_threads(2)

if importlib.util.find_spec("open_clip") is None:
    pytest.skip(
        "open_clip_torch is not installed (optional extra xmr[open_clip])", allow_module_level=True
    )

TINY_ARCH = "xmr-tiny-openclip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _stub_torchvision() -> dict[str, types.ModuleType]:
    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision stub (xmr tests): not available")

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")
    for name in (
        "Normalize",
        "Compose",
        "RandomResizedCrop",
        "ToTensor",
        "Resize",
        "CenterCrop",
        "ColorJitter",
        "Grayscale",
    ):
        setattr(transforms, name, Unavailable)
    transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    transforms.functional = functional
    misc.FrozenBatchNorm2d = Unavailable
    ops.misc = misc
    tv.transforms, tv.ops = transforms, ops
    return {
        "torchvision": tv,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "torchvision.ops": ops,
        "torchvision.ops.misc": misc,
    }


@pytest.fixture(scope="module")
def open_clip(tmp_path_factory):
    before = set(sys.modules)
    stubs: dict[str, types.ModuleType] = {}
    try:
        module = importlib.import_module("open_clip")
    except Exception:  # no torchvision, or one whose compiled ops do not load
        # transformers caches "is torchvision available?" on import: let it see the truth (no)
        # before the stub exists, so it keeps using its PIL image processors.
        importlib.import_module("transformers")
        for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "open_clip")]:
            del sys.modules[name]
        stubs = _stub_torchvision()
        sys.modules.update(stubs)
        module = importlib.import_module("open_clip")
    cfg_dir = tmp_path_factory.mktemp("oc_cfg")
    (cfg_dir / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CFG))
    module.add_model_config(cfg_dir / f"{TINY_ARCH}.json")
    yield module
    if stubs:  # leave no trace of the workaround for other test modules
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("torchvision", "open_clip"):
                del sys.modules[name]


@pytest.fixture(scope="module")
def checkpoint(open_clip, tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    path = tmp_path_factory.mktemp("oc") / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model


def _images(n=3):
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(40, 60), (32, 32), (90, 35)][:n]
    ]


def test_checkpoint_spec_round_trip(open_clip, checkpoint, tmp_path):
    from xmr.models import create_encoder

    path, reference = checkpoint
    enc = create_encoder(f"open_clip:{TINY_ARCH}@{path}", device="cpu")
    assert enc.backend == "open_clip" and enc.embed_dim == 32 and enc.context_length == 24
    assert enc.spec == f"open_clip:{TINY_ARCH}@{path.resolve()}"
    texts = ["a white suv", "a red truck"]
    t, i = enc.encode_texts(texts), enc.encode_images(_images())
    assert t.shape == (2, 32) and i.shape == (3, 32) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    # Same numbers as open_clip itself, fed xmr's preprocessing.
    reference.eval()
    with torch.no_grad():
        ref_t = reference.encode_text(open_clip.get_tokenizer(TINY_ARCH)(texts), normalize=True)
        pixels = torch.stack([enc.preprocess(im) for im in _images()])
        ref_i = reference.encode_image(pixels, normalize=True)
    np.testing.assert_allclose(t, ref_t.numpy(), atol=1e-5)
    np.testing.assert_allclose(i, ref_i.numpy(), atol=1e-5)
    # Preprocessing comes from the model's preprocess_cfg: 32 px, bicubic, OpenAI mean/std.
    pre = enc.manifest()["preprocess"]
    assert pre["size"] == 32 and pre["crop_size"] == [32, 32] and pre["crop_rounding"] == "round"

    # Saved in open_clip's hub layout: loads back as open_clip:<dir> and as a bare dir.
    out = enc.save(tmp_path / "saved")
    assert (out / "open_clip_config.json").is_file()
    for spec in (f"open_clip:{out}", str(out)):
        again = create_encoder(spec, device="cpu")
        assert again.backend == "open_clip"
        assert again.fingerprint() == enc.fingerprint()
        np.testing.assert_allclose(again.encode_texts(texts), t, atol=1e-6)


def test_training_hooks(open_clip, checkpoint):
    from xmr.models import create_encoder

    enc = create_encoder(f"open_clip:{TINY_ARCH}@{checkpoint[0]}", device="cpu")
    tokens = enc.tokenize(["a car"])
    assert tokens["input_ids"].shape == (1, 24)
    feats = enc.text_features(tokens)
    assert feats.requires_grad and feats.shape == (1, 32)
    assert isinstance(enc.logit_scale, torch.nn.Parameter) and enc.logit_bias is None


def test_errors(open_clip, tmp_path):
    from xmr.models import create_encoder

    with pytest.raises(XmrError, match="unknown open_clip architecture"):
        create_encoder("open_clip:not-an-arch")
    with pytest.raises(XmrError, match="cannot load"):
        create_encoder(f"open_clip:{TINY_ARCH}@no-such-tag")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(XmrError, match="open_clip_config.json"):
        create_encoder(str(tmp_path))
