"""The Ray Data engine: decoding tasks and model actors on a Ray cluster (``--engine ray``).

One pipeline for all the kinds of a run (so each actor loads the model once), built from
``encode_split``'s plans (the same batches as the local engine, none straddling a shard)::

    from_items(one row per planned batch: kind, shard, positions, image references or texts)
      -> map_batches(decode + crop)      Ray tasks, 1 CPU each: each image is read and decoded
                                         there (never on the driver), uint8 crops
                                         (ImagePreprocess.crop, the local engine's ImageDataset;
                                         a multimodal item's caption travels with its crop)
      -> map_batches(model actor)        ActorPoolStrategy(size=actors): one model load per
                                         actor, num_gpus=gpus_per_actor; the local engine's
                                         collate and per-batch normalisation on the actor's
                                         device
      -> iter_rows() on the driver       ``encode_split`` writes the shards, manifest and
                                         failure list as for the local engine

Rows carry pickled payloads (references, crops, vectors) so any encoder output (one or several
vectors per item) and any image reference travels unchanged. Each actor loads the model from
its spec and must find the driver's weight fingerprint and preprocessing: a node with another
model version is an error, not a silent mix. Ray is imported only when the engine starts.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr import errors
from xmr.data.loading import ImageDataset, collate_images
from xmr.encode.multimodal import KIND as MULTIMODAL
from xmr.encode.multimodal import encode_multimodal_batch
from xmr.errors import ModelMismatchError, XmrError

if TYPE_CHECKING:
    from xmr.encode.engines import Batch, EngineOptions, Plans

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray engine needs Ray Data: pip install 'xmr[ray]' (ray[data])"


def import_ray():
    """The ``ray`` module with Ray Data, or an error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise XmrError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class RayEngine:
    """Encodes planned batches on a Ray cluster (joined, or started here for the run).

    Args:
        encoder: the driver's encoder: its spec is what every actor loads, its fingerprint and
            preprocessing what every actor must find.
        options: :class:`xmr.encode.engines.EngineOptions`.
    """

    name = "ray"

    def __init__(self, encoder, options: EngineOptions) -> None:
        import_ray()  # a missing extra is an error before any work
        self.encoder, self.options = encoder, options
        self.started = self.connected = False
        self.actors, self.cpus, self.gpus = None, 0.0, 0.0

    def _connect(self) -> None:
        """Join or start Ray and size the actor pool (only once there is work to do)."""
        ray = import_ray()
        options = self.options
        if ray.is_initialized():
            if options.address:
                log.warning("Ray is already initialised in this process; using it, not %s",
                            options.address)  # fmt: skip
        elif options.address:
            ray.init(address=options.address, logging_level=logging.WARNING)
            self.started = True
        else:
            ray.init(
                num_cpus=options.num_cpus or _cores(),
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
            self.started = True
        self.connected = True
        self._size_pool(ray.cluster_resources())
        model = self.encoder.manifest()
        self.expected = {"fingerprint": model["fingerprint"], "preprocess": _plain(model)}

    def _size_pool(self, resources: dict[str, float]) -> None:
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        per_gpu = float(self.options.gpus_per_actor)
        if per_gpu > 0 and gpus < per_gpu:
            raise XmrError(
                f"--gpus-per-actor {per_gpu:g}: the Ray cluster has {gpus:g} GPU(s); "
                "use --gpus-per-actor 0 to run the model on CPUs"
            )
        actors = self.options.actors
        if actors is None:
            actors = max(1, int(gpus // per_gpu)) if per_gpu > 0 else max(1, int(cpus // 2))
        if per_gpu == 0 and actors >= cpus:
            # Every CPU actor holds a CPU for good: none would be left for the decoding tasks.
            raise XmrError(
                f"{actors} CPU model actor(s) would leave none of the Ray cluster's {cpus:g} "
                f"CPU(s) for decoding; use --actors {max(1, int(cpus) - 1)} or fewer"
            )
        self.actors, self.cpus, self.gpus = int(actors), cpus, gpus

    def describe(self) -> dict[str, Any]:
        """What ran where; ``actors`` is None when every shard was reused and Ray never ran."""
        return {
            "engine": self.name,
            "address": self.options.address,
            "actors": self.actors,
            "gpus_per_actor": float(self.options.gpus_per_actor),
            "cluster_cpus": self.cpus,
            "cluster_gpus": self.gpus,
        }

    def run(self, plans: Plans, draft: bool) -> Iterator[tuple[str, Batch]]:
        """One pipeline for every kind (one actor pool); yields each planned batch once."""
        ray = import_ray()
        rows = [
            {"kind": kind, "shard": int(shard), "payload": _dump((pos, [inputs[p] for p in pos]))}
            for kind, (inputs, plan) in plans.items()
            for shard, pos in plan
        ]
        if not rows:
            return  # all finished: no cluster to start
        if not self.connected:
            self._connect()
        # One planned batch per block, so decoding and the model overlap batch by batch.
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        if "images" in plans or MULTIMODAL in plans:
            preprocess = replace(self.encoder.preprocess, draft=bool(draft))
            ds = ds.map_batches(
                _decode_rows, batch_size=1, fn_kwargs={"preprocess": preprocess}, num_cpus=1
            )
        per_gpu = float(self.options.gpus_per_actor)
        ds = ds.map_batches(
            _ModelActor,
            fn_constructor_kwargs={
                "spec": self.encoder.spec,
                "device": "cuda" if per_gpu > 0 else "cpu",
                "precision": self.encoder.precision,
                "expected": self.expected,
                "image_backend": getattr(self.encoder.preprocess, "backend", None),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=1,
            **({"num_gpus": per_gpu} if per_gpu > 0 else {}),
        )
        with _quiet_ray_data(ray):
            try:
                for row in ds.iter_rows():
                    positions, vectors, failed = pickle.loads(row["payload"])
                    yield str(row["kind"]), (int(row["shard"]), list(positions), vectors, failed)
            except XmrError:
                raise
            except Exception as exc:
                raise _explain(exc) from exc

    def close(self) -> None:
        self.connected = False
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _plain(model: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing an actor must reproduce (draft is the run's choice, not the model's)."""
    return {k: v for k, v in (model.get("preprocess") or {}).items() if k != "draft"}


def _decode_rows(batch: dict[str, np.ndarray], preprocess) -> dict[str, np.ndarray]:
    """Ray task: ``(positions, image refs)`` -> ``[(position, uint8 crop or None, error)]``,
    decoded exactly as the local engine's DataLoader workers do (errors recorded, not raised);
    text rows pass through."""
    out = []
    for kind, payload in zip(batch["kind"], batch["payload"], strict=True):
        if kind not in ("images", MULTIMODAL):
            out.append(payload)
            continue
        positions, inputs = pickle.loads(payload)
        # A multimodal input is (image, caption): the image is decoded, the caption travels on.
        refs = [x[0] for x in inputs] if kind == MULTIMODAL else inputs
        images = ImageDataset(refs, preprocess.crop)
        decoded = [(p, *images[j][1:]) for j, p in enumerate(positions)]
        if kind == MULTIMODAL:
            captions = {p: x[1] for p, x in zip(positions, inputs, strict=True)}
            out.append(_dump((decoded, captions)))
        else:
            out.append(_dump(decoded))
    return {**batch, "payload": np.array(out, dtype=object)}


class _ModelActor:
    """Ray actor: loads the model once, then encodes one planned batch per call."""

    def __init__(
        self,
        spec: str,
        device: str,
        precision: str,
        expected: dict[str, Any],
        image_backend: str | None = None,
    ) -> None:
        from xmr.models import create_encoder

        self.encoder = create_encoder(
            spec, device=device, precision=precision, image_backend=image_backend
        )
        if self.encoder.precision != precision:
            raise XmrError(
                f"precision {precision} is not available to a Ray actor on {device} (it ran "
                f"{self.encoder.precision}); use --gpus-per-actor or --precision fp32"
            )
        model = self.encoder.manifest()
        if (
            model["fingerprint"] != expected["fingerprint"]
            or _plain(model) != expected["preprocess"]
        ):
            raise ModelMismatchError(
                f"a Ray actor on {os.uname().nodename} loaded {spec!r} with other weights or "
                f"preprocessing (fingerprint {model['fingerprint']}, driver's "
                f"{expected['fingerprint']}): every node must see the same model files and "
                "xmr version (save an in-memory model before encoding it with Ray)"
            )
        # Corpus captions are documents to a text model with query / document prompts (st:).
        self.text_encoders = {
            "texts": self.encoder.encode_texts,
            "captions": getattr(self.encoder, "encode_documents", self.encoder.encode_texts),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for kind, payload in zip(batch["kind"], batch["payload"], strict=True):
            if kind in ("images", MULTIMODAL):
                decoded = pickle.loads(payload)
                decoded, captions = decoded if kind == MULTIMODAL else (decoded, None)
                positions, pixels, failed = collate_images(decoded)
                if pixels is None:
                    vectors = np.zeros((0, int(self.encoder.embed_dim)), np.float32)
                elif captions is not None:  # the Q-Former over each crop and its caption
                    row_captions = [captions[p] for p in positions]
                    vectors = encode_multimodal_batch(self.encoder, pixels, row_captions)
                else:  # uint8 crops: rescaled and normalised on the device, as locally
                    vectors = self.encoder.encode_images(pixels, batch_size=len(positions))
            else:
                positions, texts = pickle.loads(payload)
                vectors = self.text_encoders[kind](texts, batch_size=len(texts))
                failed = []
            out.append(_dump((positions, np.asarray(vectors, dtype=np.float32), failed)))
        return {**batch, "payload": np.array(out, dtype=object)}


@contextmanager
def _quiet_ray_data(ray):
    """No Ray Data progress bars or per-execution INFO lines (xmr prints its own progress)."""
    ctx = ray.data.DataContext.get_current()
    bars, logger = ctx.enable_progress_bars, logging.getLogger("ray.data")
    level = logger.level
    ctx.enable_progress_bars = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        logger.setLevel(level)


def _explain(exc: BaseException) -> XmrError:
    """The xmr error an actor or task raised, else one naming the Ray failure.

    A task's error comes back as a chain of causes; an actor's ``__init__`` error only as the
    text of an ``ActorDiedError``, so the xmr error is read back from its traceback text."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, XmrError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.findall(r"xmr\.errors\.(\w+): (.+)", text)
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, XmrError)
        if isinstance(kind, type) and issubclass(kind, XmrError):
            try:
                return kind(message.strip())
            except TypeError:  # an error class with other required arguments
                return XmrError(message.strip())
    first = text.strip().splitlines()[0] if text.strip() else ""
    return XmrError(f"the Ray encoding failed: {type(exc).__name__}: {first}")
