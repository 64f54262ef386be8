"""Where ``encode_split`` runs decoding and the model: the engine registry.

``local`` (the default) is ``encode_split``'s own data path: DataLoader workers decode in this
machine's processes and the model runs in this process. Any other engine (``ray``) is an object
that receives the planned batches of every kind and yields their vectors; ``encode_split`` keeps
everything else (the manifest, the resume checks, shard writing and the failure list), so every
engine writes the same embeddings directory.

An engine factory is called as ``factory(encoder, options)`` and returns an
:class:`EncodeEngine`, or None for the in-process path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from xmr.encode.ray_engine import RayEngine
from xmr.errors import XmrError
from xmr.registry import Registry

# (shard, ok positions, vectors [len(ok), ...], [(position, error)]) for one planned batch.
Batch = tuple[int, list[int], np.ndarray, list[tuple[int, str]]]
# The planned batches of a kind: (shard, input positions), no batch straddling a shard.
Plan = Sequence[tuple[int, list[int]]]
# kind -> (the kind's inputs: ImageRefs or strings, its plan).
Plans = dict[str, tuple[Sequence[Any], Plan]]


@dataclass
class EngineOptions:
    """Options of the distributed engines (the local engine ignores them).

    Attributes:
        address: Ray cluster to join: ``auto`` (the one ``ray start`` made on this node),
            ``ray://host:10001`` (Ray Client) or ``host:6379``; None starts Ray on this machine
            for the run and stops it afterwards.
        actors: model actors (one model load each); None: the cluster's GPUs divided by
            ``gpus_per_actor``, or half its CPUs when the model runs on CPUs.
        gpus_per_actor: GPUs each model actor reserves (fractions share a GPU); 0 runs the
            model on CPUs.
        num_cpus: CPUs of a Ray started here (None: this machine's cores).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None


class EncodeEngine(Protocol):
    """A distributed engine: yields the vectors of planned batches, then is closed."""

    def run(self, plans: Plans, draft: bool) -> Iterator[tuple[str, Batch]]:
        """(kind, batch) for every planned batch of every kind, in any order, each once;
        ``draft``: JPEG draft decoding (see ``encode_split``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ran where (recorded in the summary)."""
        ...

    def close(self) -> None:
        """Release what the engine started (a Ray started here is shut down)."""
        ...


ENGINES: Registry[Callable[[Any, EngineOptions], EncodeEngine | None]] = Registry("encode engine")


def register_engine(name: str):
    """Decorator registering ``factory(encoder, options) -> EncodeEngine | None``."""
    return ENGINES.register(name)


def list_engines() -> list[str]:
    return ENGINES.names()


def open_engine(name: str, encoder, options: EngineOptions | None = None) -> EncodeEngine | None:
    """The engine ``name`` for ``encoder`` (None: the local, in-process path)."""
    options = options or EngineOptions()
    if options.actors is not None and options.actors < 1:
        raise XmrError(f"actors must be >= 1, got {options.actors}")
    if options.gpus_per_actor < 0:
        raise XmrError(f"gpus per actor must be >= 0, got {options.gpus_per_actor}")
    if name == "local" and (options.address or options.actors or options.gpus_per_actor):
        raise XmrError(
            "--ray-address, --actors and --gpus-per-actor belong to --engine ray "
            "(the local engine uses --workers and --device)"
        )
    return ENGINES.get(name)(encoder, options)


def run_remote(engine: EncodeEngine, runs: dict, batch_size: int, draft, progress, on_batch):
    """Every kind's pending batches through one run of ``engine``; ``runs`` are
    ``encode_split``'s per-kind runs (``begin``, ``plan``, ``take``: each shard is written as
    soon as its last batch is in, whatever order the batches come back in)."""
    for run in runs.values():
        run.begin(progress)
    try:
        plans = {kind: (run.inputs, run.plan(batch_size)) for kind, run in runs.items()}
        for kind, batch in engine.run(plans, draft):
            runs[kind].take(batch, on_batch)
    finally:
        for run in runs.values():
            run.close_bar()


@register_engine("local")
def _local(encoder, options: EngineOptions) -> None:
    return None


@register_engine("ray")
def _ray(encoder, options: EngineOptions) -> EncodeEngine:
    return RayEngine(encoder, options)
