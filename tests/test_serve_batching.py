"""MicroBatcher, the service's limits and the `xmr serve` command, without a model."""

from __future__ import annotations

import asyncio
import threading

import pytest

from xmr.serve.batching import MicroBatcher
from xmr.serve.limits import ApiError, ServeSettings, check_category, check_k, check_query


class Recorder:
    def __init__(self, fail_on=None):
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, items):
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError("boom")
        return [x * 10 for x in items]


async def _submit_all(batcher, items):
    return await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)


def test_concurrent_submissions_are_batched_in_order():
    fn = Recorder()
    b = MicroBatcher(fn, max_batch=64, max_wait_ms=200)
    try:
        out = asyncio.run(_submit_all(b, list(range(20))))
    finally:
        b.close()
    assert out == [x * 10 for x in range(20)]
    assert sum(len(c) for c in fn.calls) == 20
    assert len(fn.calls) < 20
    assert b.stats.calls == len(fn.calls) and b.stats.items == 20
    # The event loop never runs the batch function.
    assert fn.threads and all(t.startswith("xmr-batch") for t in fn.threads)


def test_batches_never_exceed_max_batch():
    fn = Recorder()
    b = MicroBatcher(fn, max_batch=4, max_wait_ms=100)
    try:
        out = asyncio.run(_submit_all(b, list(range(10))))
    finally:
        b.close()
    assert out == [x * 10 for x in range(10)]
    assert max(len(c) for c in fn.calls) <= 4
    assert len(fn.calls) >= 3


def test_an_error_reaches_every_waiter_of_its_batch_only():
    fn = Recorder(fail_on=3)
    b = MicroBatcher(fn, max_batch=64, max_wait_ms=200)
    try:
        out = asyncio.run(_submit_all(b, [1, 2, 3]))
        assert all(isinstance(x, ValueError) for x in out)
        # The batcher keeps working after a failed batch.
        assert asyncio.run(_submit_all(b, [5])) == [50]
    finally:
        b.close()


def test_disabled_batching_calls_once_per_submission():
    fn = Recorder()
    b = MicroBatcher(fn, enabled=False)
    try:
        out = asyncio.run(_submit_all(b, list(range(6))))
    finally:
        b.close()
    assert out == [x * 10 for x in range(6)]
    assert sorted(fn.calls) == [[x] for x in range(6)]


def test_works_across_event_loops():
    fn = Recorder()
    b = MicroBatcher(fn, max_wait_ms=1)
    try:
        assert asyncio.run(_submit_all(b, [1])) == [10]
        assert asyncio.run(_submit_all(b, [2])) == [20]
    finally:
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(b.submit(1))


def test_a_wrong_number_of_results_is_an_error():
    b = MicroBatcher(lambda items: [], max_wait_ms=1)
    try:
        out = asyncio.run(_submit_all(b, [1]))
    finally:
        b.close()
    assert isinstance(out[0], RuntimeError)


# --- limits ---------------------------------------------------------------------------------------


def test_checks():
    s = ServeSettings(max_k=50, default_k=80, max_query_chars=10)
    assert s.default_k == 50
    assert check_k(None, s) == 50 and check_k("7", s) == 7 and check_k(7.0, s) == 7
    for bad, code in (
        (51, "k_too_large"),
        (0, "k_too_small"),
        ("x", "bad_k"),
        (True, "bad_k"),
        ([1], "bad_k"),
        (2.5, "bad_k"),
    ):
        with pytest.raises(ApiError) as err:
            check_k(bad, s)
        assert err.value.code == code and err.value.status == 400
    assert check_query("  hi  ", s) == "hi"
    for bad in (None, "", "   ", "x" * 11, 5, "a\x00"):
        with pytest.raises(ApiError):
            check_query(bad, s)
    assert check_category("a", {"a": 1}) == "a" and check_category("", {"a": 1}) is None
    with pytest.raises(ApiError, match="no categories"):
        check_category("a", {})


def test_settings_round_trip_through_the_environment():
    s = ServeSettings(max_k=7, batching=False, allow_writes=True, token="0123456789")
    assert ServeSettings.from_env(s.to_env()) == s
    assert "token" not in s.public()
    from xmr.errors import XmrError

    with pytest.raises(XmrError):
        ServeSettings(max_k=0)
    with pytest.raises(XmrError, match="at least 8"):
        ServeSettings(allow_writes=True, token="short")


# --- the command ----------------------------------------------------------------------------------


def test_cli_help_and_bad_arguments(tmp_path, capsys):
    from xmr.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--processes", "--max-k", "--allow-writes", "--token"):
        assert flag in out
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "not an index directory" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["serve", str(tmp_path), "--allow-writes"]) == 2
    assert "token" in capsys.readouterr().err
    assert (
        main(["serve", str(tmp_path), "--allow-writes", "--token", "0123456789", "--workers", "2"])
        == 2
    )


def test_a_lone_sequential_client_does_not_wait():
    import time

    fn = Recorder()
    b = MicroBatcher(fn, max_wait_ms=300)

    async def sequential(n):
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            await b.submit(i)
            out.append(time.perf_counter() - t0)
        return out

    try:
        waits = asyncio.run(sequential(10))
        # Concurrent clients again: they share calls.
        before = len(fn.calls)
        assert asyncio.run(_submit_all(b, list(range(12)))) == [x * 10 for x in range(12)]
        assert len(fn.calls) - before < 12
    finally:
        b.close()
    # Without history the batcher waits; once queries are seen to come one at a time (none
    # finds another in flight), a query goes straight to the encoder.
    assert min(waits[:3]) >= 0.25
    assert max(waits[4:]) < 0.25
