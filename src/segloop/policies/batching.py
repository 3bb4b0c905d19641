"""Many concurrent turns, one forward pass: the batcher every in-process model policy shares.

Episodes run concurrently on an event loop (a GRPO group, a batch, the demo's sessions); each asks its
policy for a turn with ``await batcher.submit(request)``. The first request of an idle loop starts a drain
task that takes whatever is waiting (up to ``max_batch``), runs it as one call of ``run`` in a worker
thread (so the event loop, and the tools of other episodes, keep going meanwhile) and repeats until the
queue is empty; turns that arrive while the model is busy make up the next batch. Futures belong to their
event loop, so each loop gets its own queue (the demo runs sessions on their own loops); ``run`` itself is
called by one thread at a time.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class _LoopQueue(Generic[Request, Result]):
    def __init__(self, batcher: TurnBatcher[Request, Result]) -> None:
        self.batcher = batcher
        self.waiting: list[tuple[Request, asyncio.Future[Result]]] = []
        self.drain_task: asyncio.Task[None] | None = None

    async def drain(self) -> None:
        # One pass of the loop first: episodes made ready by the same event join the first batch.
        await asyncio.sleep(0)
        size = self.batcher.max_batch
        while self.waiting:
            batch = [(r, f) for r, f in self.waiting[:size] if not f.cancelled()]
            del self.waiting[:size]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self.batcher.run_locked, [request for request, _ in batch])
            except Exception as exc:  # every waiting episode gets the error (the policy node reports it)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class TurnBatcher(Generic[Request, Result]):
    """See the module docstring. ``run`` maps a list of requests to their results, in order."""

    def __init__(self, run: Callable[[list[Request]], list[Result]], max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.run = run
        self.max_batch = max_batch
        self.batch_sizes: Counter[int] = Counter()  # calls of ``run`` by batch size, for logs and benchmarks
        self.lock = threading.Lock()  # held by every forward pass of the model behind ``run``
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue[Request, Result]] = (
            weakref.WeakKeyDictionary())

    def run_locked(self, requests: list[Request]) -> list[Result]:
        """``run`` with this batcher's lock held: one batch at a time, whichever loop asks."""
        with self.lock:
            self.batch_sizes[len(requests)] += 1
            return self.run(requests)

    async def submit(self, request: Request) -> Result:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue(self)
        future: asyncio.Future[Result] = loop.create_future()
        queue.waiting.append((request, future))
        if queue.drain_task is None or queue.drain_task.done():
            queue.drain_task = asyncio.create_task(queue.drain())
        return await future
