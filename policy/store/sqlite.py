"""The embedded store: SQLite through the standard library, on one worker thread.

The default for one node (SPEC §8). It is not shared with other nodes, so it offers no
`Cluster` (`SqlStore.cluster` is None) and the node runs the embedded bus.

When the database cannot be used — another process holds its write lock (a backup tool, an
administrator's `sqlite3` shell in a transaction), or the disk fails — a call waits at most
`BUSY_TIMEOUT_MS` for the lock and then raises `StoreUnavailable`: the driver's errors are
mapped in one place, `_run`, by SQLite's result code (`UNAVAILABLE`), never by message text.
The wait happens on the store's worker thread, so the event loop goes on meanwhile (calls to
the store queue behind it: there is one connection).

Group commit: writes that arrive while a commit is under way wait for it, then commit
together in one transaction (one fsync for all of them), as databases do with their log.
Each write is still its own unit inside it — a savepoint, so a write refused by a guard or a
constraint leaves nothing behind and the others of its group commit — and each caller is
answered only once the transaction holding its write is durable. The audit events are
sealed in the order the writes run in the transaction, which is the order they commit in.
A lone write (the store otherwise idle) commits at once, as before: nothing waits to gather.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.audit import GENESIS, AuditEvent
from policy.errors import StoreUnavailable
from policy.store.interface import AuditDraft
from policy.store.sql import (
    DUPLICATE_OPEN_APPEALS,
    ONE_OPEN_APPEAL,
    SCHEMA,
    SCHEMA_VERSION,
    SqlStore,
    Statement,
    already_exists,
    guard_failed,
    migrations,
    seal_next,
    supersede_duplicates,
)

# Another process holds a lock for longer than this: give up (a mature client waits a little,
# then tells its caller to retry, rather than queueing requests behind an unknown holder).
BUSY_TIMEOUT_MS = 2000

# SQLite's primary result codes that mean "cannot be used now", not "this statement is wrong".
UNAVAILABLE = {
    5: "SQLITE_BUSY",  # another connection holds the lock: "database is locked"
    6: "SQLITE_LOCKED",
    10: "SQLITE_IOERR",  # "disk I/O error"
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
}


@dataclass
class _Write:
    """One write waiting for its group's commit: its statements and audit event, and the
    future its caller awaits (the sealed event, or why it was refused)."""

    statements: list[Statement]
    audit: AuditDraft
    done: asyncio.Future[AuditEvent] = field(repr=False)


def _refusal(exc: Exception) -> Exception:
    """What a write refused inside its group is answered with: a constraint is a Conflict."""
    return already_exists(exc) if isinstance(exc, sqlite3.IntegrityError) else exc


def unavailable(exc: sqlite3.Error) -> StoreUnavailable | None:
    """The store's typed error for a driver error that means "unavailable", else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in UNAVAILABLE:
        return None
    return StoreUnavailable("store-unavailable", f"the database cannot be used now: {exc}")


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
        self._waiting: list[_Write] = []  # writes for the next group commit
        self._committer: asyncio.Task[None] | None = None  # commits groups while writes wait

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parlor-sqlite")
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        if self.read_only:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._conn = conn
            self.head_seq = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]
            found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            self.guardians_table = conn.execute(found, ("guardians",)).fetchone() is not None
            self.recordings_table = conn.execute(found, ("recordings",)).fetchone() is not None
            return
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("BEGIN IMMEDIATE")
        for ddl in SCHEMA:
            conn.execute(ddl.format(real="REAL"))
        stored = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if stored is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif stored < SCHEMA_VERSION:
            for ddl in migrations(stored):
                conn.execute(ddl.format(real="REAL"))
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        conn.execute(
            "INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, ?)", (GENESIS,)
        )
        duplicates = [row["id"] for row in conn.execute(DUPLICATE_OPEN_APPEALS)]
        if duplicates:
            statements, draft = supersede_duplicates(duplicates, self.clock())
            for sql, params in statements:
                conn.execute(sql, params)
            self._append(conn, draft)
        conn.execute(ONE_OPEN_APPEAL)
        conn.execute("COMMIT")
        self._conn = conn
        self.head_seq = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._committer is not None:  # the writes already asked for are answered first
            await asyncio.shield(self._committer)
        conn = self._conn
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._conn = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise StoreUnavailable("store-closed", "the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            mapped = unavailable(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def _write(self, statements: list[Statement], audit: AuditDraft) -> AuditEvent:
        if self._executor is None:
            raise StoreUnavailable("store-closed", "the store is not open")
        write = _Write(statements, audit, asyncio.get_running_loop().create_future())
        self._waiting.append(write)
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_groups())
        return await asyncio.shield(write.done)  # a cancelled caller's write still commits

    async def _commit_groups(self) -> None:
        """Commit the waiting writes, a group at a time, until none wait."""
        group: list[_Write] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    outcomes = await self._run(
                        self._write_group_sync, [(w.statements, w.audit) for w in group]
                    )
                except Exception as exc:  # the transaction itself failed: nothing committed
                    outcomes = [exc] * len(group)
                for write, outcome in zip(group, outcomes, strict=True):
                    if isinstance(outcome, AuditEvent):
                        self.noticed(outcome.seq)
                        write.done.set_result(outcome)
                    else:
                        write.done.set_exception(outcome)
                        write.done.exception()  # retrieved: a cancelled caller's is not news
        finally:  # cancelled (the loop is closing): what was not answered never will be
            self._committer = None
            for write in group + self._waiting:
                write.done.cancel()
            self._waiting = []

    def _write_group_sync(
        self, group: list[tuple[list[Statement], AuditDraft]]
    ) -> list[AuditEvent | Exception]:
        """One transaction for the group, each write in its own savepoint: a refused write
        is rolled back alone and answered with why; a failure of the database itself
        (`unavailable`) or of the commit fails the whole group, of which nothing is written."""
        conn = self._conn
        assert conn is not None
        outcomes: list[AuditEvent | Exception] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statements, audit in group:
                conn.execute("SAVEPOINT write")
                try:
                    for sql, params, *guard in statements:
                        cursor = conn.execute(sql, params)
                        if guard and cursor.rowcount == 0:
                            raise guard_failed(guard)
                    event = self._append(conn, audit)
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and unavailable(exc) is not None:
                        raise
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                    outcomes.append(_refusal(exc))
                else:
                    conn.execute("RELEASE write")
                    outcomes.append(event)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed disk may have ended it already
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return outcomes

    def _append(self, conn: sqlite3.Connection, audit: AuditDraft) -> AuditEvent:
        """Seal the next audit event and move the head, inside the caller's transaction."""
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
        return event

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return await self._run(self._fetch_sync, sql, params)

    async def _snapshot(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        return await self._run(self._snapshot_sync, queries)

    def _snapshot_sync(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")  # deferred: a read transaction, one snapshot (WAL)
        try:
            return [[dict(row) for row in conn.execute(sql).fetchall()] for sql in queries]
        finally:
            conn.execute("COMMIT")

    def _fetch_sync(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        assert self._conn is not None
        return [dict(row) for row in self._conn.execute(sql, params).fetchall()]
