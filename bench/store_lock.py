"""The embedded store under another process's write lock: how long a write waits before it
is refused (`StoreUnavailable`, the API's 503 `unavailable`), and what that wait costs the
event loop (nothing: the store waits on its worker thread).

Each round writes through `SqliteStore` on a real database while a second process holds
`BEGIN EXCLUSIVE` (tests/harness/sqlite_lock.py), and a ticker on the event loop measures how
late it wakes (`asyncio.sleep(0.01)`). The baseline is the same ticker on the loop with no
write at all, for as long, in the same run. JSON to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from policy.errors import StoreUnavailable  # noqa: E402
from policy.store import AuditDraft, SqliteStore  # noqa: E402
from policy.store.sqlite import BUSY_TIMEOUT_MS  # noqa: E402
from tests.harness.sqlite_lock import held_write_lock  # noqa: E402

STEP = 0.01


async def ticking(work) -> tuple[float, list[float], object]:
    """Run `work` while a ticker records how late each 10 ms sleep woke: (seconds, lags, result)."""
    loop, lags = asyncio.get_running_loop(), []
    task = asyncio.ensure_future(work)
    started = time.perf_counter()
    while not task.done():
        before = loop.time()
        await asyncio.sleep(STEP)
        lags.append(loop.time() - before - STEP)
    seconds = time.perf_counter() - started
    try:
        result: object = task.result()
    except StoreUnavailable as exc:
        result = exc
    return seconds, lags, result


def summary(lags: list[float]) -> dict[str, float]:
    return {
        "ticks": len(lags),
        "lag_median_ms": round(1000 * statistics.median(lags), 2) if lags else 0.0,
        "lag_max_ms": round(1000 * max(lags), 2) if lags else 0.0,
    }


async def run(rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="parlor-lock-") as tmp:
        path = Path(tmp) / "parlor.db"
        store = SqliteStore(path)
        await store.open()
        baseline, locked, refused_after = [], [], []
        try:
            for i in range(rounds):
                draft = AuditDraft("operator:bench", "bench.write", f"bench:{i}", {"round": i})
                with held_write_lock(path):
                    seconds, lags, result = await ticking(store.audit(draft))
                assert isinstance(result, StoreUnavailable), result
                refused_after.append(seconds)
                locked += lags
                baseline += (await ticking(asyncio.sleep(seconds)))[1]
                await store.audit(draft)  # and the store writes again once the lock is gone
        finally:
            await store.close()
    return {
        "rounds": rounds,
        "busy_timeout_ms": BUSY_TIMEOUT_MS,
        "refused_after_s": {
            "min": round(min(refused_after), 3),
            "median": round(statistics.median(refused_after), 3),
            "max": round(max(refused_after), 3),
        },
        "event_loop_while_locked": summary(locked),
        "event_loop_baseline": summary(baseline),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.rounds)), indent=2))


if __name__ == "__main__":
    main()
