"""Micro-batching: concurrent queries share one encoder call, off the event loop.

A text encoder costs nearly the same for 1 query as for 32 on a CPU or GPU (the work is
dominated by fixed per-call overheads and matrix multiplies that vectorise), so under load the
service collects the queries that arrive within a few milliseconds of each other and encodes
them together. A dedicated worker thread owns the batching loop: the event loop only enqueues a
query and awaits its future, so it stays free to accept requests while the encoder runs, and the
batcher works whatever event loop (or loops) the requests come from.

While a batch is being encoded, new queries queue up; the next batch takes them all at once
(no extra wait), so batches grow with load and throughput grows with it. A lone query waits up
to ``max_wait_ms`` for company only when recent queries arrived while others were still in
flight (concurrent clients), so a single sequential client pays no waiting time.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


@dataclass
class BatchStats:
    calls: int = 0
    items: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, Any]:
        mean = self.items / self.calls if self.calls else 0.0
        return {"calls": self.calls, "items": self.items, "largest": self.largest, "mean": mean}


class MicroBatcher(Generic[T, R]):
    """Run ``fn(list_of_inputs) -> list_of_outputs`` on batches of concurrent submissions.

    Args:
        fn: the batch function (one output per input, in order); it runs in worker threads.
        max_batch: the most inputs one call takes.
        max_wait_ms: how long the first input of a batch waits for others when the queue is
            empty and inputs have lately been arriving concurrently; a backlog is taken at once
            without waiting.
        enabled: when False every submission is its own call (run in a thread pool of
            ``threads``), for comparison.
        threads: worker threads (each runs its own batches); 1 suits an encoder that already
            uses every core.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        enabled: bool = True,
        threads: int = 1,
        name: str = "xmr-batch",
    ) -> None:
        self.fn = fn
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.enabled = enabled
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._start_lock = threading.Lock()
        self._n_threads = max(1, int(threads))
        self._recent: deque[bool] = deque(maxlen=16)  # did each arrival find others in flight?
        self._in_flight = 0
        self._name = name

    # -- public API ------------------------------------------------------------------------

    async def submit(self, item: T) -> R:
        """Queue one input and wait for its output (exceptions of ``fn`` propagate)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        if not self.enabled:
            pool = self._ensure_pool()
            results = await loop.run_in_executor(pool, self._call, [item])
            return results[0]
        self._ensure_threads()
        future: asyncio.Future = loop.create_future()
        self._note_arrival()
        self._queue.put((item, future, loop))
        return await future

    def close(self) -> None:
        """Stop the worker threads after the queued work is done."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- internals -------------------------------------------------------------------------

    def _ensure_pool(self) -> ThreadPoolExecutor:
        with self._start_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._n_threads, thread_name_prefix=self._name)
            return self._pool

    def _ensure_threads(self) -> None:
        if self._threads:
            return
        with self._start_lock:
            if self._threads:
                return
            for i in range(self._n_threads):
                t = threading.Thread(target=self._worker, name=f"{self._name}-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _call(self, items: list[T]) -> Sequence[R]:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)}")
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
        return results

    def _note_arrival(self) -> None:
        with self._stats_lock:
            self._recent.append(self._in_flight > 0)
            self._in_flight += 1

    def _done(self, n: int) -> None:
        with self._stats_lock:
            self._in_flight -= n

    def _company_expected(self) -> bool:
        """Whether more queries are likely soon: lately, queries came while others were in
        flight. Without history, assume so."""
        with self._stats_lock:
            recent = list(self._recent)
        if len(recent) < 4:
            return True
        return 4 * sum(recent) >= len(recent)

    def _collect(self, first: Any) -> tuple[list, bool]:
        """The batch that starts with ``first``: the backlog, then what arrives in max_wait."""
        batch = [first]
        stop = False
        # Take the backlog at once: these queries already waited while the encoder was busy.
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
        if len(batch) > 1 or not self._company_expected():
            return batch, stop
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                entry = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
        return batch, stop

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list) -> None:
        # A request whose client went away needs no work.
        live = [e for e in batch if not e[1].cancelled()]
        results: Sequence[Any] = ()
        error: BaseException | None = None
        try:
            if live:
                results = self._call([e[0] for e in live])
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiter
            error = exc
        # Leave "in flight" before answering: a sequential client's next query can arrive as
        # soon as its answer does, and must not be counted as arriving alongside this batch.
        self._done(len(batch))
        if error is not None:
            for _, fut, loop in live:
                _deliver(loop, fut, exc=error)
            return
        for (_, fut, loop), result in zip(live, results, strict=True):
            _deliver(loop, fut, result=result)


def _deliver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, *, result=None, exc=None):
    def settle() -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    # A closed loop means nobody waits for this answer any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
