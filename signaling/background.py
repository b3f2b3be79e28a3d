"""Work that runs on after the code that started it has returned.

asyncio keeps only a weak reference to a task, so a task nobody holds may vanish half-way;
and on the way out, what is still running should be given a moment to finish. `Background`
holds its tasks until they are done and can wait for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for what is running now."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
