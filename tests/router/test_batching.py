"""The Coalescer: concurrent requests share model calls, within the batch and in-flight limits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from kubedistill_router.batching import Coalescer
from kubedistill_router.errors import UpstreamError


class GatedModel:
    """A model call that answers each text with its own number, and holds every call until released."""

    def __init__(self, hold: bool = True):
        self.calls: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.fail_with: Exception | None = None

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return np.array([[float(text)] for text in texts])
        finally:
            self.in_flight -= 1


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


def texts(*numbers: int) -> list[str]:
    return [str(n) for n in numbers]


async def one_call_out(model: GatedModel, first: list[str], **options) -> tuple[Coalescer, asyncio.Future]:
    """A coalescer allowing one call at a time, with that call (of `first`) out and held."""
    coalescer = Coalescer(model, max_batch=8, max_in_flight=1, **options)
    pending = asyncio.ensure_future(coalescer(first))
    await until(lambda: model.calls)
    return coalescer, pending


async def test_a_lone_request_is_called_at_once_and_alone():
    model = GatedModel(hold=False)
    coalescer = Coalescer(model, max_batch=8, max_in_flight=1)
    rows = await coalescer(texts(1, 2))
    assert model.calls == [["1", "2"]]
    assert rows[:, 0].tolist() == [1, 2]


async def test_requests_arriving_while_calls_are_out_leave_together_with_their_own_rows():
    model = GatedModel()
    sizes: list[int] = []
    coalescer, first = await one_call_out(model, texts(0), on_call=sizes.append)
    waiting = [asyncio.ensure_future(coalescer(texts(10 * n, 10 * n + 1))) for n in range(1, 4)]
    await asyncio.sleep(0)
    assert len(model.calls) == 1  # the one call allowed is out: the others queue
    model.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert model.calls == [["0"], ["10", "11", "20", "21", "30", "31"]]
    assert [r[:, 0].tolist() for r in results] == [[0], [10, 11], [20, 21], [30, 31]]
    assert sizes == [1, 6]
    assert model.most_in_flight == 1


async def test_calls_stay_within_max_batch_and_large_requests_are_split_in_order():
    model = GatedModel()
    coalescer = Coalescer(model, max_batch=4, max_in_flight=2)
    big = asyncio.ensure_future(coalescer(texts(*range(10))))
    small = [asyncio.ensure_future(coalescer(texts(100 + n))) for n in range(3)]
    await until(lambda: len(model.calls) == 2)
    model.gate.set()
    rows, *singles = await asyncio.gather(big, *small)
    assert rows[:, 0].tolist() == list(range(10))
    assert [s[:, 0].tolist() for s in singles] == [[100], [101], [102]]
    assert all(len(call) <= 4 for call in model.calls)
    assert sorted(t for call in model.calls for t in call) == sorted(texts(*range(10), 100, 101, 102))
    assert model.most_in_flight == 2


async def test_without_a_limit_every_request_is_its_own_call():
    model = GatedModel()
    coalescer = Coalescer(model, max_batch=4, max_in_flight=None)
    pending = [asyncio.ensure_future(coalescer(texts(n))) for n in range(5)]
    await until(lambda: len(model.calls) == 5)
    model.gate.set()
    await asyncio.gather(*pending)
    assert model.calls == [[str(n)] for n in range(5)]


async def test_a_failed_call_fails_each_of_its_requests_and_the_next_call_goes_ahead():
    model = GatedModel()
    coalescer, first = await one_call_out(model, texts(1))
    shared = [asyncio.ensure_future(coalescer(texts(n))) for n in (2, 3)]
    await asyncio.sleep(0)
    model.fail_with = UpstreamError("Triton is gone")
    model.gate.set()
    results = await asyncio.gather(first, *shared, return_exceptions=True)
    assert [type(r) for r in results] == [UpstreamError] * 3
    model.fail_with = None
    assert (await coalescer(texts(4)))[:, 0].tolist() == [4]


async def test_a_request_whose_texts_break_a_shared_call_fails_alone():
    # a text the model call cannot take ("bad") shares a call with two good requests: they still get their rows
    async def model(batch: list[str]) -> np.ndarray:
        model.calls.append(list(batch))
        await gate.wait()
        if "bad" in batch:
            raise ValueError("cannot take 'bad'")
        return np.array([[float(text)] for text in batch])

    model.calls = []
    gate = asyncio.Event()
    coalescer = Coalescer(model, max_batch=8, max_in_flight=1)
    first = asyncio.ensure_future(coalescer(texts(1)))
    await until(lambda: model.calls)
    shared = [asyncio.ensure_future(coalescer(t)) for t in (texts(2, 3), ["bad", "4"], texts(5))]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, *shared, return_exceptions=True)
    assert results[0][:, 0].tolist() == [1] and results[1][:, 0].tolist() == [2, 3]
    assert isinstance(results[2], ValueError) and results[3][:, 0].tolist() == [5]
    assert model.calls == [["1"], ["2", "3", "bad", "4", "5"], ["2", "3"], ["bad", "4"], ["5"]]


async def test_a_request_that_goes_away_while_queued_is_not_computed():
    model = GatedModel()
    coalescer, first = await one_call_out(model, texts(1))
    gone = asyncio.ensure_future(coalescer(texts(2)))
    kept = asyncio.ensure_future(coalescer(texts(3)))
    await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    assert (await kept)[:, 0].tolist() == [3]
    await first
    assert model.calls == [["1"], ["3"]]


async def test_a_model_answering_the_wrong_number_of_rows_is_an_upstream_error():
    async def short(texts_: list[str]) -> np.ndarray:
        return np.zeros((len(texts_) - 1, 2))

    with pytest.raises(UpstreamError, match="expected 2 rows"):
        await Coalescer(short, max_batch=8, max_in_flight=1)(texts(1, 2))


async def test_close_cancels_queued_requests():
    model = GatedModel()
    coalescer, first = await one_call_out(model, texts(1))
    queued = asyncio.ensure_future(coalescer(texts(2)))
    await asyncio.sleep(0)
    await coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await queued
    model.gate.set()
    await first  # a call already out still answers its caller
    assert model.calls == [["1"]]


def test_limits_below_one_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(GatedModel(), max_batch=0, max_in_flight=1)
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(GatedModel(), max_batch=4, max_in_flight=0)
