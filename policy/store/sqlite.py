"""The embedded store: SQLite through the standard library, on one worker thread.

The default for one node (SPEC §8). It is not shared with other nodes, so it offers no
`Cluster` (`SqlStore.cluster` is None) and the node runs the embedded bus.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from policy.audit import GENESIS, AuditEvent
from policy.errors import Conflict, StoreUnavailable
from policy.store.interface import AuditDraft
from policy.store.sql import SCHEMA, SCHEMA_VERSION, SqlStore, Statement, seal_next


class SqliteStore(SqlStore):
    """The embedded default: one connection on one worker thread, WAL, synchronous=FULL.

    A single thread serialises every transaction (SQLite allows one writer anyway) and keeps
    fsync off the event loop; synchronous=FULL makes an acknowledged write survive power loss.
    """

    def __init__(
        self, path: str | os.PathLike[str], clock: Any = time.time, *, read_only: bool = False
    ) -> None:
        super().__init__(clock)
        self.path = Path(path)
        self.read_only = read_only  # an auditor's view: SQLite refuses every write
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parlor-sqlite")
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        if self.read_only:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
            self.head_seq = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]
            return
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("BEGIN IMMEDIATE")
        for ddl in SCHEMA:
            conn.execute(ddl.format(real="REAL"))
        if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute(
            "INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, ?)", (GENESIS,)
        )
        conn.execute("COMMIT")
        self._conn = conn
        self.head_seq = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]

    async def close(self) -> None:
        if self._executor is None:
            return
        conn = self._conn
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._conn = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise StoreUnavailable("store-closed", "the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _write(self, statements: list[Statement], audit: AuditDraft) -> AuditEvent:
        event: AuditEvent = await self._run(self._write_sync, statements, audit)
        self.noticed(event.seq)
        return event

    def _write_sync(self, statements: list[Statement], audit: AuditDraft) -> AuditEvent:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params, *guard in statements:
                cursor = conn.execute(sql, params)
                if guard and cursor.rowcount == 0:
                    raise Conflict(
                        "state-changed", "the record changed meanwhile; reload and retry"
                    )
            head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            event = seal_next(head["seq"], head["hash"], audit, self.clock())
            conn.execute(
                "INSERT INTO audit (seq, at, actor, action, subject, data, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.seq, event.at, event.actor, event.action, event.subject,
                 json.dumps(event.data, sort_keys=True), event.prev_hash, event.hash),
            )  # fmt: skip
            conn.execute(
                "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (event.seq, event.hash)
            )
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            raise Conflict("already-exists", f"conflicts with an existing record: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return event

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return await self._run(self._fetch_sync, sql, params)

    def _fetch_sync(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        assert self._conn is not None
        return [dict(row) for row in self._conn.execute(sql, params).fetchall()]
