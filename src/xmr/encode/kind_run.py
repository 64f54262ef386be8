"""Encoding one kind (images, texts, captions or multimodal items) into its shards: finding the
finished shards, planning batches that never straddle a shard, the image DataLoader, and writing
a shard as soon as its last batch is in (the data path is described in
:mod:`xmr.encode.pipeline`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmr.data.loading import ImageDataset, collate_images, worker_init
from xmr.encode.multimodal import KIND as MULTIMODAL
from xmr.encode.multimodal import encode_multimodal_batch
from xmr.encode.store import (
    IMAGE_KINDS,
    kind_vectors,
    read_shard,
    shard_failures,
    shard_path,
    shard_ranges,
    vector_shape,
    write_shard,
)
from xmr.errors import XmrError

SHOW_FAILURES = 5
# Batches each worker may hold ready: enough to ride out a slow image, and a bound on memory
# (the float32 batches of 4 per worker were what made encode peak well above a plain loop).
PREFETCH_PER_WORKER = 2


@dataclass
class KindSummary:
    """What one kind's encoding did: inputs, vectors written, failures, shards reused, speed."""

    kind: str
    count: int
    encoded: int = 0
    failed: int = 0
    shards: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    items_per_s: float = 0.0
    data_wait_s: float = 0.0
    data_wait_share: float = 0.0
    first_failures: list[dict[str, str]] = field(default_factory=list)


class KindRun:
    """Encodes the pending shards of one kind, collecting each shard's batches until it is whole."""

    def __init__(self, encoder, out: Path, kind: str, ids, inputs, info, dim: int) -> None:
        self.encoder, self.out, self.kind = encoder, out, kind
        self.ids, self.inputs, self.info, self.dim = ids, inputs, info, int(dim)
        self.shape = vector_shape(self.dim, kind_vectors(info))  # one input's embedding
        self.summary = KindSummary(kind, len(ids), shards=info["n_shards"])
        self.pending: dict[int, tuple[int, int]] = {}
        self.buffers: dict[int, dict[str, list]] = {}

    def encode(self, batch_size, workers, draft, progress, on_batch) -> KindSummary:
        self.begin(progress)
        try:
            for batch in self._batches(batch_size, workers, draft):
                self.take(batch, on_batch)
        finally:
            self.close_bar()
        return self.end()

    def begin(self, progress: bool) -> None:
        """Find the finished shards; start the clock and the progress bar."""
        (self.out / self.kind).mkdir(exist_ok=True)
        for stale in (self.out / self.kind).glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a temporary shard left by a killed run
        self._scan_finished()
        s = self.summary
        self.done_before = s.count - sum(end - start for start, end in self.pending.values())
        self.bar = _progress_bar(progress, s.count, self.done_before, self.kind)
        self.started, self.done_now, self.waited = time.perf_counter(), 0, 0.0

    def take(self, batch, on_batch) -> None:
        """One encoded batch: (shard, ok positions, vectors, [(position, error)])."""
        shard, positions, vectors, failed = batch
        self._collect(shard, positions, vectors, failed)
        self.done_now += len(positions) + len(failed)
        if self.bar is not None:
            self.bar.update(len(positions) + len(failed))
        if on_batch is not None:
            on_batch(self.kind, self.done_before + self.done_now)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def end(self) -> KindSummary:
        s, done_now = self.summary, self.done_now
        s.first_failures = s.first_failures[:SHOW_FAILURES]
        s.seconds = round(time.perf_counter() - self.started, 3)
        s.items_per_s = round(done_now / s.seconds, 2) if s.seconds > 0 else 0.0
        s.data_wait_s = round(self.waited, 3)
        s.data_wait_share = round(self.waited / s.seconds, 3) if s.seconds > 0 else 0.0
        if self.kind in IMAGE_KINDS and s.count and s.failed == s.count:
            first = s.first_failures[0]["error"] if s.first_failures else "?"
            raise XmrError(f"none of the {s.count} images could be decoded (first: {first})")
        if self.pending:  # an engine that lost a batch must not leave a manifest saying complete
            raise XmrError(f"{self.kind}: {len(self.pending)} shard(s) were not encoded")
        return s

    def plan(self, batch_size: int) -> list[tuple[int, list[int]]]:
        """(shard, input positions) of every batch still to encode; none straddles a shard."""
        return [
            (shard, list(range(b, min(end, b + batch_size))))
            for shard, (start, end) in self.pending.items()
            for b in range(start, end, batch_size)
        ]

    def _scan_finished(self) -> None:
        for i, start, end in shard_ranges(self.info):
            data = read_shard(
                shard_path(self.out, self.kind, i),
                start=start,
                end=end,
                inputs_hash=self.info["inputs_hash"],
                dim=self.dim,
                vectors=kind_vectors(self.info),
            )
            if data is None:
                self.pending[i] = (start, end)
            else:
                self.summary.shards_reused += 1
                self.summary.encoded += len(data["ids"])
                self.summary.failed += len(data["failed_ids"])
                self.summary.first_failures.extend(shard_failures(data)[:SHOW_FAILURES])

    def _batches(self, batch_size: int, workers: int, draft: bool):
        """Yield (shard, ok positions, vectors, [(position, error)]) in input order."""
        plan = self.plan(batch_size)
        if not plan:
            return
        if self.kind not in IMAGE_KINDS:
            # A text model with separate query / document prompts (st:) encodes corpus
            # captions as documents; CLIP-family encoders have one text tower for both.
            encode = self.encoder.encode_texts
            if self.kind == "captions":
                encode = getattr(self.encoder, "encode_documents", encode)
            for shard, positions in plan:
                texts = [self.inputs[p] for p in positions]
                vectors = encode(texts, batch_size=len(texts))
                yield shard, positions, np.asarray(vectors, dtype=np.float32), []
            return
        from dataclasses import replace

        from torch.utils.data import DataLoader

        preprocess = replace(self.encoder.preprocess, draft=bool(draft))
        # A multimodal input is (image, caption): the workers decode the image only.
        refs = [x[0] for x in self.inputs] if self.kind == MULTIMODAL else self.inputs
        loader = DataLoader(
            ImageDataset(refs, preprocess.crop),
            batch_sampler=[positions for _, positions in plan],
            num_workers=int(workers),
            collate_fn=collate_images,
            pin_memory=self.encoder.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            prefetch_factor=PREFETCH_PER_WORKER if workers else None,
        )
        batches = iter(loader if workers else _single_threaded(loader))
        for shard, _ in plan:
            waiting = time.perf_counter()
            positions, pixels, failed = next(batches)
            self.waited += time.perf_counter() - waiting
            if pixels is None:
                vectors = np.zeros((0, *self.shape), np.float32)
            elif self.kind == MULTIMODAL:  # the Q-Former over each crop and its caption
                captions = [self.inputs[p][1] for p in positions]
                vectors = encode_multimodal_batch(self.encoder, pixels, captions)
            else:  # uint8 crops: normalised on the device inside encode_images
                vectors = self.encoder.encode_images(pixels, batch_size=len(positions))
            yield shard, positions, np.asarray(vectors, dtype=np.float32), failed

    def _collect(self, shard: int, positions, vectors, failed) -> None:
        buf = self.buffers.setdefault(shard, {"pos": [], "vec": [], "failed": []})
        buf["pos"].extend(positions)
        buf["vec"].append(vectors)
        buf["failed"].extend((self.ids[p], err) for p, err in failed)
        start, end = self.pending[shard]
        if len(buf["pos"]) + len(buf["failed"]) < end - start:
            return
        order = np.argsort(buf["pos"], kind="stable")
        vecs = np.concatenate(buf["vec"]).reshape(-1, *self.shape)[order]
        write_shard(
            shard_path(self.out, self.kind, shard),
            vectors=vecs,
            ids=[self.ids[buf["pos"][j]] for j in order],
            start=start,
            end=end,
            inputs_hash=self.info["inputs_hash"],
            failed=buf["failed"],
        )
        self.summary.encoded += len(buf["pos"])
        self.summary.failed += len(buf["failed"])
        self.summary.first_failures.extend(
            {"id": fid, "error": err} for fid, err in buf["failed"][:SHOW_FAILURES]
        )
        del self.buffers[shard], self.pending[shard]


def _single_threaded(loader):
    """Iterate an in-process DataLoader with one torch thread while it decodes and preprocesses:
    per-image tensor ops are too small to split, and splitting them costs 5x on a busy machine.
    The model then runs with all threads again."""
    import torch

    threads = torch.get_num_threads()
    batches = iter(loader)
    while True:
        torch.set_num_threads(1)
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield batch


def _progress_bar(progress: bool, total: int, initial: int, kind: str):
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    unit = {"images": "img", MULTIMODAL: "item"}.get(kind, "text")
    return tqdm(
        total=total, initial=initial, unit=unit, desc=f"encoding {kind}", dynamic_ncols=True
    )
