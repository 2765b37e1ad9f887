"""Single flight: concurrent callers asking for one key share one running task."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """`await flights.run(key, make)`: the first caller starts `make()`; the others join it.

    The task outlives a caller that gives up (a client that disconnects does not cancel the
    work the others wait for); its outcome is forgotten once it ends, so a later call tries
    again. Example::

        flights = SingleFlight[bytes]()
        data = await flights.run(("org/name", "config.json"), lambda: fetch(...))
    """

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def task(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """The running task for `key`, started now if there is none."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return task

    async def run(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        return await asyncio.shield(self.task(key, make))

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: a task nobody awaits any more logs nothing

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
