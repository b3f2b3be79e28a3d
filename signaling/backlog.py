"""Writes that must not be lost when the store is unavailable for a while.

Some writes record what already happened and cannot be refused: a session that ended (the
call is over whatever the store says) and the number of sessions a directive ended. When the
store raises `StoreUnavailable` for one of them, it goes into the `Backlog` and is written,
in order, once the store answers again: the scheduler tries every `RETRY_SECONDS` (the
embedded node), the cluster bus when it has caught up after a reconnect (before it closes
the records of sessions that ended while it was cut off), and the node once more on its way
out. A write that fails for another reason is not retried (it would fail again).

What is acknowledged is never in here: a directive, a lift, a confirmation or an appeal
answers only after its commit, and an unavailable store makes it answer 503 instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from policy.errors import PolicyError, StoreUnavailable

log = logging.getLogger("parlor.backlog")

RETRY_SECONDS = 2.0  # at most this often: each try may wait for the store's busy timeout

Write = Callable[[], Awaitable[object]]


class Backlog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._writes: dict[str, Write] = {}  # by what they record, in the order they came
        self._clock = clock
        self._tried = float("-inf")

    def __len__(self) -> int:
        return len(self._writes)

    def __contains__(self, key: str) -> bool:
        return key in self._writes

    def add(self, key: str, write: Write, exc: StoreUnavailable) -> None:
        """Keep `write` (what `key` names: e.g. "session S-1 ended") for later."""
        self._writes.setdefault(key, write)
        log.warning(
            "store unavailable: %s is kept and written once it answers (%s)", key, exc.message
        )

    async def flush(self, *, force: bool = False) -> bool:
        """Write what is kept, oldest first, stopping at the first that the store still
        refuses. Unless `force`, at most once per RETRY_SECONDS. True when nothing is left."""
        if not self._writes:
            return True
        now = self._clock()
        if not force and now - self._tried < RETRY_SECONDS:
            return False
        self._tried = now
        for key, write in list(self._writes.items()):
            try:
                await write()
            except StoreUnavailable:
                return False
            except PolicyError as exc:
                log.warning("could not write %s: %s; dropped", key, exc.message)
            else:
                log.info("written now that the store answers: %s", key)
            del self._writes[key]
        return True

    def lost(self) -> list[str]:
        """What is still kept (on the way out: it is logged as not written)."""
        return list(self._writes)
