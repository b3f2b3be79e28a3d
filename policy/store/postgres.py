"""The PostgreSQL store: the shared store of a cluster, and its `Cluster` (bus and placement).

The domain SQL is `policy/store/sql.py`'s, written once with `?` placeholders and rewritten here to
`$n`. Every write is one transaction that also appends its audit event under a row lock on
`audit_head` and sends `pg_notify('parlor_events', <the event>)`: PostgreSQL delivers a
notification only when its transaction commits, so a node never hears of an event it cannot
read, and the lock gives every event of the cluster one sequence number in commit order.
The payload is the whole event as JSON, so a listening node can act on it without reading
it back (one database round trip less between a directive on one node and the kill on
another); an event too large for a payload (8000 bytes) is announced by its sequence
number alone, and the listener reads it from the table.

Two tables exist only here, because only a cluster needs them: `nodes` (each node's
heartbeat, in the database's clock so node clocks may disagree) and `placements` (which node
hosts a visit's call). They are operational state, not domain state, so they are written
without audit events.

Connection failures become `StoreUnavailable` (callers fail closed), integrity violations
become `Conflict`, as in the SQLite store.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from policy.audit import GENESIS, AuditEvent, canonical_json
from policy.errors import StoreUnavailable
from policy.store.interface import AuditDraft, Cluster, Placement
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

CHANNEL = "parlor_events"
NOTIFY_LIMIT = 7999  # bytes: PostgreSQL refuses a longer payload

# pg_advisory_xact_lock key for schema creation: CREATE TABLE IF NOT EXISTS is not safe
# when two nodes start at once on an empty database.
SCHEMA_LOCK = 0x7061726C6F72  # "parlor"

# The database's clock as epoch seconds: heartbeats and placements are compared in one clock.
DB_NOW = "extract(epoch from clock_timestamp())"

CLUSTER_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS nodes (
        id TEXT PRIMARY KEY, url TEXT NOT NULL, last_seen DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS placements (
        visit TEXT PRIMARY KEY, node TEXT NOT NULL, url TEXT NOT NULL,
        placed_at DOUBLE PRECISION NOT NULL)""",
]

# Failures that mean "the database cannot be reached", as opposed to a refused statement.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
)


def announcement(event: AuditEvent) -> str:
    """The NOTIFY payload of a committed event: the event itself, or its number if too large."""
    payload = canonical_json(event.to_json())
    return payload if len(payload.encode()) <= NOTIFY_LIMIT else str(event.seq)


def announced(payload: str) -> tuple[int, AuditEvent | None]:
    """Read a NOTIFY payload back: (seq, event), (seq, None) or (0, None) if unreadable."""
    if payload.isdigit():
        return int(payload), None
    try:
        fields = json.loads(payload)
        event = AuditEvent(**{name: fields[name] for name in AuditEvent.__dataclass_fields__})
    except (ValueError, TypeError, KeyError):
        return 0, None
    if not isinstance(event.seq, int) or not isinstance(event.data, dict):
        return 0, None
    return event.seq, event


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """Rewrite `?` placeholders to `$1, $2, ...`, leaving quoted text and identifiers alone."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


def postgres_ddl(ddl: str) -> str:
    """The shared schema in PostgreSQL's types: REAL is 4 bytes there and INTEGER 4 bytes,
    where SQLite's are 8; DOUBLE PRECISION and BIGINT keep SQLite's meaning."""
    return ddl.format(real="DOUBLE PRECISION").replace(" INTEGER", " BIGINT")


def _rowcount(status: str) -> int:
    """asyncpg answers a command with its tag, e.g. 'UPDATE 1' or 'INSERT 0 1'."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable("store-unavailable", f"the database cannot be reached: {exc!r}")


class PostgresListener:
    """A dedicated connection that LISTENs for committed events and carries the heartbeat.

    `listen`'s `on_event` runs for every notification; `on_lost()` runs once when the connection
    dies (server shutdown, network reset) — or when `close` is called.
    """

    def __init__(self, conn: asyncpg.Connection, on_lost: Callable[[], None]) -> None:
        self._conn = conn
        self._on_lost = on_lost
        conn.add_termination_listener(lambda _conn: on_lost())

    async def heartbeat(self, node: str, url: str) -> None:
        """Record that `node` is alive; a failure means the link to the cluster is down."""
        try:
            await self._conn.execute(
                f"INSERT INTO nodes (id, url, last_seen) VALUES ($1, $2, {DB_NOW})"
                " ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, last_seen = EXCLUDED.last_seen",
                node,
                url,
            )
        except UNREACHABLE as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        """Drop the connection at once: never wait on a server that may not answer."""
        if not self._conn.is_closed():
            self._conn.terminate()


class PostgresStore(SqlStore):
    """A connection pool; each write is one transaction that appends and announces its event.
    It is its own `Cluster`: the bus and the placements live in the same database."""

    def __init__(
        self, url: str, clock: Any = time.time, *, pool_size: int = 10, read_only: bool = False
    ) -> None:
        super().__init__(clock)
        self.url = url
        self.pool_size = pool_size
        self.read_only = read_only  # an auditor's view: every transaction is READ ONLY
        self._writers: set[int] = set()  # server PIDs of its open connections it wrote on
        self._pool: asyncpg.Pool | None = None

    @property
    def cluster(self) -> Cluster:
        return self

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=self.pool_size,
                max_inactive_connection_lifetime=0,
                timeout=5.0,
                command_timeout=10.0,
                server_settings={"default_transaction_read_only": "on"} if self.read_only else None,
            )
            if self.read_only:
                self.head_seq = await self.audit_head()
                rows = await self._fetch(
                    "SELECT to_regclass('guardians') IS NOT NULL AS guardians,"
                    " to_regclass('recordings') IS NOT NULL AS recordings"
                )
                self.guardians_table = bool(rows[0]["guardians"])
                self.recordings_table = bool(rows[0]["recordings"])
                return
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                for ddl in SCHEMA:
                    await conn.execute(postgres_ddl(ddl))
                for ddl in CLUSTER_SCHEMA:
                    await conn.execute(ddl)
                stored = await conn.fetchval("SELECT MAX(version) FROM schema_version")
                if stored is None:
                    await conn.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION
                    )
                elif stored < SCHEMA_VERSION:
                    for ddl in migrations(stored):
                        await conn.execute(postgres_ddl(ddl))
                    await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)
                await conn.execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, $1) ON CONFLICT (id) DO NOTHING",
                    GENESIS,
                )
                duplicates = [row["id"] for row in await conn.fetch(DUPLICATE_OPEN_APPEALS)]
                if duplicates:
                    statements, draft = supersede_duplicates(duplicates, self.clock())
                    for sql, params in statements:
                        await conn.execute(numbered(sql), *params)
                    self._wrote_on(conn)
                    await self._append(conn, draft)
                await conn.execute(ONE_OPEN_APPEAL)
            self.head_seq = await self.audit_head()
        except UNREACHABLE as exc:
            await self.close()
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 2.0)
            except Exception:  # unreachable or slow: drop the connections instead
                pool.terminate()

    def _wrote_on(self, conn: Any) -> None:
        """Remember the server PID of a connection this store writes on, before its NOTIFY can
        be delivered, so that `listen` recognises this process's own events; and forget it
        when the connection closes, before the server can give the PID to another node's."""
        pid = conn.get_server_pid()
        if pid not in self._writers:
            self._writers.add(pid)
            conn.add_termination_listener(lambda _conn: self._writers.discard(pid))

    def _ready_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store-closed", "the store is not open")
        return self._pool

    # -- primitives -----------------------------------------------------------------------
    async def _write(self, statements: list[Statement], audit: AuditDraft) -> AuditEvent:
        pool = self._ready_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                self._wrote_on(conn)
                for sql, params, *guard in statements:
                    status = await conn.execute(numbered(sql), *params)
                    if guard and _rowcount(status) == 0:
                        raise guard_failed(guard)
                event = await self._append(conn, audit)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise already_exists(exc) from exc
        except UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        self.noticed(event.seq)
        return event

    async def _append(self, conn: Any, audit: AuditDraft) -> AuditEvent:
        """Seal the next audit event, move the head and announce it, inside the caller's
        transaction. The head is locked here, last, so it is held only for these statements."""
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        event = seal_next(head["seq"], head["hash"], audit, self.clock())
        await conn.execute(
            "WITH appended AS ("
            "  INSERT INTO audit (seq, at, actor, action, subject, data, prev_hash, hash)"
            "  VALUES ($1, $2, $3, $4, $5, $6, $7, $8)),"
            " moved AS (UPDATE audit_head SET seq = $1, hash = $8 WHERE id = 1)"
            " SELECT pg_notify($9, $10)",
            event.seq, event.at, event.actor, event.action, event.subject,
            json.dumps(event.data, sort_keys=True), event.prev_hash, event.hash, CHANNEL,
            announcement(event),
        )  # fmt: skip
        return event

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        pool = self._ready_pool()
        try:
            rows = await pool.fetch(numbered(sql), *params)
        except UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        return [dict(row) for row in rows]

    async def _snapshot(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        pool = self._ready_pool()
        try:
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return [[dict(row) for row in await conn.fetch(sql)] for sql in queries]
        except UNREACHABLE as exc:
            raise _unavailable(exc) from exc

    # -- cluster --------------------------------------------------------------------------
    async def audit_head(self) -> int:
        """The sequence number of the last committed audit event: a bus cursor starts here."""
        row = await self._one("SELECT seq FROM audit_head WHERE id = ?", (1,))
        return int(row["seq"]) if row else 0

    async def listen(
        self,
        on_event: Callable[[int, AuditEvent | None, bool], None],
        on_lost: Callable[[], None],
    ) -> PostgresListener:
        """Open a dedicated connection that LISTENs on the events channel.

        `on_event(seq, event, own)` runs for every committed event; `event` is None when the
        payload carried only the sequence number (or could not be read: seq is then 0); `own`
        is true when this store wrote it (PostgreSQL tells which backend sent a notification).
        """

        def notified(_conn: Any, pid: int, _channel: str, payload: str) -> None:
            seq, event = announced(payload)
            self.noticed(seq)  # committed: whoever tails the audit log may read it now
            on_event(seq, event, pid in self._writers)

        try:
            conn = await asyncpg.connect(self.url, timeout=2.0)
        except UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        try:
            # A heartbeat needs no fsync: losing the last one in a crash changes nothing.
            await conn.execute("SET synchronous_commit TO off")
            await conn.add_listener(CHANNEL, notified)
        except UNREACHABLE as exc:
            conn.terminate()
            raise _unavailable(exc) from exc
        return PostgresListener(conn, on_lost)

    async def place(self, visit: str, node: str, url: str, stale_after: float) -> Placement:
        """Claim a visit for `node` unless a live node holds it; return who holds it now.

        One statement: the first claim inserts; a later one takes over only when the
        holder's heartbeat is older than `stale_after` seconds (or it left the cluster).
        The conflicting row is locked, so two nodes taking over at once cannot both win.
        """
        sql = (
            f"INSERT INTO placements AS p (visit, node, url, placed_at) VALUES (?, ?, ?, {DB_NOW})"
            " ON CONFLICT (visit) DO UPDATE SET node = EXCLUDED.node, url = EXCLUDED.url,"
            " placed_at = EXCLUDED.placed_at"
            " WHERE p.node = EXCLUDED.node OR NOT EXISTS (SELECT 1 FROM nodes n"
            f"   WHERE n.id = p.node AND n.last_seen > {DB_NOW} - ?)"
            " RETURNING visit, node, url"
        )
        row = await self._one(sql, (visit, node, url, float(stale_after)))
        if row is None:
            row = await self._one(
                "SELECT visit, node, url FROM placements WHERE visit = ?", (visit,)
            )
        if row is None:  # deleted between the two statements: the holder left; claim again
            return await self.place(visit, node, url, stale_after)
        return Placement(visit=row["visit"], node=row["node"], url=row["url"])

    async def leave(self, node: str) -> None:
        """A node shutting down: its visits may be placed elsewhere at once."""
        await self._fetch("DELETE FROM placements WHERE node = ?", (node,))
        await self._fetch("DELETE FROM nodes WHERE id = ?", (node,))

    async def live_nodes(self, stale_after: float) -> set[str]:
        """The nodes whose heartbeat is younger than `stale_after` seconds (database clock)."""
        rows = await self._fetch(
            f"SELECT id FROM nodes WHERE last_seen > {DB_NOW} - ?", (float(stale_after),)
        )
        return {row["id"] for row in rows}
