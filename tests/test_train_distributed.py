"""Two processes on CPU (gloo on 127.0.0.1): the contrastive loss and the gradients over a
global batch split across ranks equal one process holding the whole batch, and ``train`` with
2 ranks x 2 accumulated micro-batches of B ends with the same weights as one process with
batch 4B."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.distributed as dist  # noqa: E402

from xmr.train import TrainConfig, train  # noqa: E402

WORLD = 2
GLOBAL_BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(spec: str, data: str):
    """Encoder, module, pixels, tokens and keys of the first GLOBAL_BATCH training examples."""
    from xmr.data.readers import load_dataset
    from xmr.models import create_encoder
    from xmr.train.data import example_keys, training_examples
    from xmr.train.model import TwoTower

    examples = training_examples(load_dataset(data, split="train").split("train"))[:GLOBAL_BATCH]
    encoder = create_encoder(spec, device="cpu")
    module = TwoTower(encoder, TrainConfig(model=spec, data=data, out="x"))
    pixels = torch.stack([encoder.preprocess(e.image.open()) for e in examples])
    texts = [e.texts[-1] for e in examples]
    keys = torch.tensor([example_keys(e, t) for e, t in zip(examples, texts, strict=True)])
    return module, pixels, texts, keys


def _loss_and_grads(module, pixels, texts, keys, rank: int, world: int):
    from xmr.train.distributed import gather_no_grad, gather_with_grad
    from xmr.train.losses import ClipLoss

    b = pixels.shape[0] // world
    rows = slice(rank * b, (rank + 1) * b)
    runner = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(module)
    tokens = module.encoder.tokenize(texts[rows])
    image, text, scale, _ = runner(pixels[rows], tokens)
    local_keys = keys[rows]
    loss = ClipLoss("soft")(
        image,
        text,
        gather_with_grad(image),
        gather_with_grad(text),
        local_keys,
        gather_no_grad(local_keys),
        scale,
        None,
        rank * b,
    )
    loss.backward()
    value = loss.detach().clone()
    if world > 1:
        dist.all_reduce(value)
        value /= world
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(value), grads


def _worker(rank: int, port: int, spec: str, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        module, pixels, texts, keys = _global_batch(spec, data)
        loss, grads = _loss_and_grads(module, pixels, texts, keys, rank, WORLD)
        torch.save({"loss": loss, "grads": grads}, Path(out) / f"grads{rank}.pt")
        dist.barrier()
        # 2 ranks x micro-batch 2 x 2 accumulated micro-batches (cached features): the same
        # contrastive batch of 8 as one process with batch 8.
        cfg = _train_config(spec, data, Path(out) / "ddp", batch_size=GLOBAL_BATCH // WORLD // 2)
        train(cfg.replace(accum_steps=2))
    finally:
        dist.destroy_process_group()


def _train_config(spec: str, data: str, out: Path, batch_size: int) -> TrainConfig:
    return TrainConfig(
        model=spec,
        data=data,
        out=str(out),
        epochs=1,
        batch_size=batch_size,
        max_train_items=3 * GLOBAL_BATCH,
        lr=1e-3,
        workers=0,
        progress=False,
        tensorboard=False,
        valid_split="valid",
        device="cpu",
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    from xmr.data.readers import load_dataset
    from xmr.data.synth import generate_synthetic
    from xmr.models import create_tiny_clip

    root = tmp_path_factory.mktemp("ddp")
    data = generate_synthetic(
        root / "data", n_train=32, n_test=0, n_valid=16, image_size=16, seed=2, n_attribute_sets=4
    )
    texts = [
        t for ts in load_dataset(data, split="train").split("train").pairs.values() for t in ts
    ]
    model = create_tiny_clip(
        root / "tiny",
        texts=texts,
        embed_dim=16,
        image_size=16,
        patch_size=8,
        vision_width=32,
        text_width=32,
        vision_layers=1,
        text_layers=1,
        heads=2,
        context_length=32,
    )
    return {"data": str(data), "model": f"hf:{model}"}


@pytest.mark.timeout(300)
def test_two_processes_equal_one(setup, tmp_path):
    from safetensors.torch import load_file

    spec, data = setup["model"], setup["data"]
    torch.multiprocessing.start_processes(
        _worker,
        args=(_free_port(), spec, data, str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    # One process, the whole global batch.
    module, pixels, texts, keys = _global_batch(spec, data)
    loss, grads = _loss_and_grads(module, pixels, texts, keys, 0, 1)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"grads{rank}.pt", weights_only=False)
        assert got["loss"] == pytest.approx(loss, abs=1e-5)
        # DDP averages the ranks' gradients; with the gather's summed backward that is exactly
        # the gradient of the global loss.
        assert got["grads"].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert loss > 0

    single = tmp_path / "single"
    train(_train_config(spec, data, single, batch_size=GLOBAL_BATCH))
    for sub in ("", "last"):  # the best model, and the last one when it is not the best
        assert (tmp_path / "ddp" / sub).is_dir() == (single / sub).is_dir()
        if not (single / sub / "model.safetensors").is_file():
            continue
        ddp_w = load_file(str(tmp_path / "ddp" / sub / "model.safetensors"))
        one_w = load_file(str(single / sub / "model.safetensors"))
        for name in one_w:
            torch.testing.assert_close(ddp_w[name], one_w[name], rtol=1e-4, atol=1e-5, msg=name)

    ddp_cfg = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert ddp_cfg["extra"]["derived"]["world_size"] == 2
    assert ddp_cfg["extra"]["derived"]["global_batch"] == GLOBAL_BATCH
    ddp_log = (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()
    one_log = (single / "train_log.jsonl").read_text().splitlines()
    for x, y in zip(ddp_log, one_log, strict=True):
        assert json.loads(x)["loss"] == pytest.approx(json.loads(y)["loss"], abs=1e-4)
