"""Batching: concurrent requests share one model call and get exactly what direct calls give."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import uvloop

from serving.batcher import Batcher, Predictions
from tests.test_serving_helpers import Version, reference_rows, served

__all__ = ["served"]


class CountingModel:
    def __init__(self, version: Version) -> None:
        self.estimator = version.estimator
        self.batch_sizes: list[int] = []

    def predict_proba(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        self.batch_sizes.append(len(rows))
        proba: npt.NDArray[np.float64] = self.estimator.predict_proba(rows)
        return proba


async def predict_concurrently(batcher: Batcher, requests: list[list[list[float]]]) -> list[Predictions]:
    return await asyncio.gather(*(batcher.submit(rows) for rows in requests))


def test_concurrent_requests_share_one_call_and_match_direct_calls(served: Version) -> None:
    rows = reference_rows(40, seed=3)
    requests = [[row.tolist()] for row in rows[:30]] + [rows[30:].tolist()]
    model = CountingModel(served)
    observed: list[int] = []
    batcher = Batcher(model.predict_proba, lambda x, p: observed.append(len(x)), max_rows=64, max_wait=0.0)

    results = asyncio.run(predict_concurrently(batcher, requests))

    assert model.batch_sizes == [40]
    assert observed == [40]
    got = np.concatenate([r.probabilities for r in results])
    np.testing.assert_array_equal(got, served.estimator.predict_proba(rows))
    classes = np.concatenate([r.classes for r in results])
    np.testing.assert_array_equal(served.estimator.classes_[classes], served.estimator.predict(rows))
    assert [len(r.probabilities) for r in results] == [1] * 30 + [10]


def test_batches_are_bounded_in_rows(served: Version) -> None:
    rows = reference_rows(100, seed=4)
    model = CountingModel(served)
    batcher = Batcher(model.predict_proba, lambda x, p: None, max_rows=32, max_wait=0.0)

    results = asyncio.run(predict_concurrently(batcher, [[row.tolist()] for row in rows]))

    assert model.batch_sizes == [32, 32, 32, 4]
    np.testing.assert_array_equal(
        np.concatenate([r.probabilities for r in results]), served.estimator.predict_proba(rows)
    )


def test_a_batch_waits_for_as_many_requests_as_the_previous_one(served: Version) -> None:
    rows = reference_rows(9, seed=6).tolist()
    model = CountingModel(served)
    batcher = Batcher(model.predict_proba, lambda x, p: None, max_rows=64, max_wait=60.0)

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit([row]) for row in rows[:4]))
        # The next wave trickles in over several turns of the event loop.
        futures = []
        for row in rows[4:8]:
            futures.append(batcher.submit([row]))
            for _ in range(3):
                await asyncio.sleep(0)
        await asyncio.gather(*futures)

    asyncio.run(scenario())
    assert model.batch_sizes == [4, 4]


def test_a_straggler_flushed_alone_does_not_shrink_the_next_wave(served: Version) -> None:
    rows = reference_rows(9, seed=7).tolist()
    model = CountingModel(served)
    batcher = Batcher(model.predict_proba, lambda x, p: None, max_rows=64, max_wait=0.05)

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit([row]) for row in rows[:4]))
        await batcher.submit([rows[4]])  # alone: the timer flushes it
        futures = []
        for row in rows[5:9]:  # the next wave of four trickles in
            futures.append(batcher.submit([row]))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)

    asyncio.run(scenario())
    assert model.batch_sizes == [4, 1, 4]


def test_a_batch_that_cannot_catch_up_goes_at_the_bound(served: Version) -> None:
    rows = reference_rows(5, seed=8).tolist()
    model = CountingModel(served)
    batcher = Batcher(model.predict_proba, lambda x, p: None, max_rows=64, max_wait=0.001)

    async def scenario() -> Predictions:
        await asyncio.gather(*(batcher.submit([row]) for row in rows[:4]))
        return await batcher.submit([rows[4]])  # load dropped: no company is coming

    assert asyncio.run(scenario()).probabilities.shape == (1, 2)
    assert model.batch_sizes == [4, 1]


def test_a_model_fault_fails_only_its_batch(served: Version) -> None:
    calls = 0

    def flaky(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model fault")
        proba: npt.NDArray[np.float64] = served.estimator.predict_proba(rows)
        return proba

    async def scenario() -> tuple[BaseException | Predictions, Predictions]:
        batcher = Batcher(flaky, lambda x, p: None, max_rows=64, max_wait=0.0)
        row = reference_rows(1, seed=5).tolist()
        first = await asyncio.gather(batcher.submit(row), return_exceptions=True)
        second = await batcher.submit(row)
        return first[0], second

    failed, succeeded = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError)
    assert succeeded.probabilities.shape == (1, 2)


def test_a_wait_shorter_than_uvloops_timer_resolution_still_waits(served: Version) -> None:
    """uvloop's timers count whole milliseconds: `call_later(0.0004)` rounds to 0 and runs at once,
    which used to flush the first request of every wave alone."""
    rows = reference_rows(8, seed=9).tolist()
    model = CountingModel(served)
    batcher = Batcher(model.predict_proba, lambda x, p: None, max_rows=64, max_wait=0.0004)

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit([row]) for row in rows[:4]))
        futures = []
        for row in rows[4:8]:  # the next wave, one request a turn
            futures.append(batcher.submit([row]))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)

    uvloop.run(scenario())
    assert model.batch_sizes == [4, 4]
