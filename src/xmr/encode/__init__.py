"""Batched, resumable encoding of a data set split into embedding shards.

Layout of an embeddings directory ``OUT``::

    OUT/manifest.json          model manifest, dimension, precision, preprocessing, per-kind counts
    OUT/items.jsonl            metadata of the split's items (``xmr index build OUT`` needs no data)
    OUT/queries.jsonl          the split's queries (id, text, category)
    OUT/images/00000.npz ...   shards of item image embeddings (ids = item ids)
    OUT/texts/00000.npz ...    query text embeddings (ids = query ids)
    OUT/captions/00000.npz ... first caption of each item (ids = item ids), when asked for
    OUT/failed.jsonl           images that could not be decoded (kind, id, error with file:line)

``encode_split(..., engine="ray")`` runs decoding and the model on a Ray cluster
(:mod:`xmr.encode.ray_engine`) and writes the same directory (:mod:`xmr.encode.engines`).

Shards are written atomically and cover fixed input ranges, so a killed run leaves only whole
shards and a re-run skips every valid one (see :mod:`xmr.encode.store`). Re-running with another
model, precision or input list is an error, not a silent mix.
"""

from xmr.data.loading import ImageDataset, collate_images
from xmr.encode.engines import EngineOptions, list_engines, register_engine
from xmr.encode.image_list import embed_image_refs
from xmr.encode.kind_run import KindSummary
from xmr.encode.loader import LoaderChoice, choose_loader
from xmr.encode.manifest import draft_size_for
from xmr.encode.pipeline import DEFAULT_SHARD_SIZE, EncodeSummary, encode_split
from xmr.encode.store import (
    KINDS,
    Embeddings,
    load_embeddings,
    load_metadata,
    read_manifest,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "KINDS",
    "EncodeSummary",
    "Embeddings",
    "EngineOptions",
    "ImageDataset",
    "KindSummary",
    "LoaderChoice",
    "choose_loader",
    "collate_images",
    "draft_size_for",
    "embed_image_refs",
    "encode_split",
    "load_embeddings",
    "list_engines",
    "load_metadata",
    "read_manifest",
    "register_engine",
]
