"""Concurrent requests for one Triton model, coalesced into shared calls.

A call starts at once while fewer than `max_in_flight` calls to the model are out, so a lone request never
waits. When they are all out, requests queue and leave together in the next call, up to the model's
max_batch_size. Under load this turns many small calls into a few full ones: fewer gRPC round trips for the
router, and fewer requests for Triton, whose fixed cost per request outweighs a small student's compute.
Without coalescing (`max_in_flight` None) every request is its own call. Either way, a request larger
than max_batch_size is split into calls Triton accepts.

No request can fail another's: when a shared call fails for anything but the model itself (UpstreamError:
Triton down or timing out, which fails every request alike), each request in it is called again alone,
so the one whose texts broke the call gets the error and the others their answers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from kubedistill_router.errors import UpstreamError

Call = Callable[[list[str]], Awaitable[np.ndarray]]
Part = tuple[list[str], "asyncio.Future[np.ndarray]"]


class Coalescer:
    """`await coalescer(texts)` answers one row of `call(texts)` per text; concurrent callers share calls."""

    def __init__(self, call: Call, max_batch: int, max_in_flight: int | None,
                 on_call: Callable[[int], None] | None = None):
        if max_batch < 1 or (max_in_flight is not None and max_in_flight < 1):
            raise ValueError(f"max_batch ({max_batch}) and max_in_flight ({max_in_flight}) must be at least 1")
        self.call = call
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.on_call = on_call  # told the number of texts in each call, for metrics
        self._queue: deque[Part] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __call__(self, texts: list[str]) -> np.ndarray:
        if len(texts) <= self.max_batch and not self._queue and self._has_room():
            return await self._alone(texts)
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(texts), self.max_batch):
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.append((texts[start:start + self.max_batch], future))
            futures.append(future)
        self._start_calls()
        if len(futures) == 1:
            return await futures[0]
        return np.concatenate(await asyncio.gather(*futures))

    def _has_room(self) -> bool:
        return self.max_in_flight is None or self._in_flight < self.max_in_flight

    async def _alone(self, texts: list[str]) -> np.ndarray:
        """A call of the caller's texts only, made in the caller's task: no queue, no hand-off."""
        self._in_flight += 1
        try:
            return await self._checked_call(texts)
        finally:
            self._in_flight -= 1
            self._start_calls()

    async def _checked_call(self, texts: list[str]) -> np.ndarray:
        if self.on_call is not None:
            self.on_call(len(texts))
        rows = await self.call(texts)
        if len(rows) != len(texts):
            raise UpstreamError(f"expected {len(texts)} rows from the model, got {len(rows)}")
        return rows

    def _start_calls(self) -> None:
        while self._queue and self._has_room() and not self._closed:
            batch: list[Part] = []
            size = 0
            while self._queue:
                texts, future = self._queue[0]
                if future.done():  # its request went away while queued: nothing to compute
                    self._queue.popleft()
                    continue
                if batch and size + len(texts) > self.max_batch:
                    break
                batch.append(self._queue.popleft())
                size += len(texts)
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._shared(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shared(self, batch: list[Part]) -> None:
        """One call for the texts of several requests; each request's future gets its own rows."""
        try:
            rows = await self._checked_call([text for part, _ in batch for text in part])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except UpstreamError as error:  # the model failed: every request in the call fails alike
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        except Exception as error:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(error)
            else:  # something one request holds broke the shared call: it must fail that request only
                await self._each_alone(batch)
        else:
            start = 0
            for part, future in batch:
                if not future.done():
                    future.set_result(rows[start:start + len(part)])
                start += len(part)
        finally:
            self._in_flight -= 1
            self._start_calls()

    async def _each_alone(self, batch: list[Part]) -> None:
        """Each request of a failed shared call in a call of its own, one after another in the same
        in-flight slot, so that each gets its own answer or its own error."""
        for part, future in batch:
            if future.done():
                continue
            try:
                rows = await self._checked_call(part)
            except asyncio.CancelledError:
                for _, waiting in batch:
                    waiting.cancel()
                raise
            except Exception as error:
                if not future.done():
                    future.set_exception(error)
            else:
                if not future.done():
                    future.set_result(rows)

    async def close(self) -> None:
        self._closed = True
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
