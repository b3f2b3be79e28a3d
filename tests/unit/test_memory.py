"""Giving freed native memory back after sessions end (signaling/memory.py)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from signaling.memory import find_malloc_trim, resident_bytes, trim_after_sessions_end, trim_now
from signaling.metrics import Metrics
from signaling.registry import LiveSessions

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def counter(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


@glibc
def test_trimming_gives_back_what_was_freed() -> None:
    trim = find_malloc_trim()
    assert trim is not None
    resident = resident_bytes()
    assert resident is not None and resident > 0
    # Many small blocks spread over the heap, most of them freed: pages in the middle of the
    # heap are free but stay resident until trimmed.
    blocks = [bytearray(2000) for _ in range(40_000)]
    del blocks[::2], blocks[: len(blocks) // 2]
    assert trim_now(trim) > 1 << 20  # some 40 MB here: at least a megabyte comes back
    assert trim_now(trim) < 1 << 20  # nothing left to give back right after a trim


@glibc
async def test_the_node_trims_only_after_sessions_ended() -> None:
    sessions, metrics = LiveSessions(), Metrics()
    task = asyncio.create_task(trim_after_sessions_end(sessions, metrics, interval=0.01))
    try:
        await asyncio.sleep(0.1)
        assert counter(metrics, "parlor_memory_trims_total") == 0  # nothing ended: no trim
        # What ended sessions leave behind: freed blocks in the middle of the heap.
        blocks = [bytearray(2000) for _ in range(40_000)]
        del blocks[::2], blocks[: len(blocks) // 2]
        sessions.ended += 3
        for _ in range(100):
            await asyncio.sleep(0.01)
            if counter(metrics, "parlor_memory_trims_total"):
                break
        assert counter(metrics, "parlor_memory_trims_total") == 1
        await asyncio.sleep(0.1)
        assert counter(metrics, "parlor_memory_trims_total") == 1  # once per batch of endings
        assert counter(metrics, "parlor_memory_trimmed_bytes_total") > 1 << 20  # what it gave back
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
