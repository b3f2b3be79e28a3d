"""Another process holding a SQLite database's write lock, as a backup tool or an
administrator's `sqlite3` shell left in a transaction would (tests and benches).

`held_write_lock(path)` starts a real second Python process that opens the database, runs
`BEGIN EXCLUSIVE` and keeps the transaction open until the context exits (then rolls back).
In WAL mode readers still read; every writer gets SQLITE_BUSY ("database is locked") once its
busy timeout has passed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def held_write_lock(path: Path | str) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline().strip()
        if line != "locked":
            raise RuntimeError(f"the lock holder did not take the lock: {line!r}")
        yield holder
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
