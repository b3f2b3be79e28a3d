"""Handing the memory that ended sessions freed back to the operating system.

Each WebRTC session allocates native memory outside Python's allocator (OpenSSL's DTLS
context and certificate, libsrtp's sessions, packet buffers) and frees it when it ends.
glibc's malloc keeps freed chunks for reuse and gives pages back from the middle of a heap
only when asked, so with sessions joining and leaving all day the resident set creeps up
although nothing leaks: `bench/soak.py` measured +16 % in ten minutes, Python's objects and
tracemalloc flat, and one `malloc_trim(0)` on the running server gave 15 MB back at once.

So at most every `TRIM_SECONDS`, and only when sessions ended since the last time, the node
calls `malloc_trim(0)` in a worker thread: ctypes releases the GIL, the event loop runs on,
and glibc takes each arena's lock for the moment it trims that arena. Where the C library is
not glibc (musl, macOS) there is no `malloc_trim` and nothing is done.

A node process also collects cyclic garbage less often than CPython's default
(:func:`collect_garbage_less_often`): it keeps hundreds of thousands of long-lived objects
(every call's peer connections, transports, legs), and with the default thresholds a full
collection, which walks all of them, ran every few hundred thousand allocations: during a
join storm it was a large part of what admitting a participant cost, and in steady state a
pause in every call's packets.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
from collections.abc import Callable

from signaling.metrics import Metrics
from signaling.registry import LiveSessions

log = logging.getLogger("parlor.memory")

TRIM_SECONDS = 30.0
GC_THRESHOLDS = (50_000, 50, 100)
"""Allocations before a young collection, young collections before a middle one, middle
ones before a full one (CPython's default: 700, 10, 10)."""
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def collect_garbage_less_often() -> None:
    """For a long-running node (or load) process, once its start-up is done: what start-up
    made (modules, configuration) is frozen out of every later collection, and collections
    run at :data:`GC_THRESHOLDS`. Garbage without cycles is freed at once as ever."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` from the C library this process runs on, if it has one."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def resident_bytes() -> int | None:
    """This process's resident set, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def trim_now(trim: Callable[[int], int]) -> int:
    """Trim every arena; return how many resident bytes that gave back (0 if unknown)."""
    before = resident_bytes()
    trim(0)
    after = resident_bytes()
    return max(0, before - after) if before is not None and after is not None else 0


async def trim_after_sessions_end(
    sessions: LiveSessions, metrics: Metrics, interval: float = TRIM_SECONDS
) -> None:
    """The node's background task (see the module's docstring)."""
    trim = find_malloc_trim()
    if trim is None:
        log.info("no malloc_trim in this C library: freed native memory stays with the allocator")
        return
    seen = sessions.ended
    while True:
        await asyncio.sleep(interval)
        if sessions.ended == seen:
            continue
        seen = sessions.ended
        released = await asyncio.to_thread(trim_now, trim)
        metrics.memory_trims.inc()
        metrics.memory_trimmed_bytes.inc(released)
