"""The SQL of the store, written once: the schema, the row mappings and every domain query.

`SqlStore` implements `policy.store.interface.Store` on two primitives its subclasses
provide: `_write` (run statements and append their audit event in one durable transaction)
and `_fetch`. `SqliteStore` (policy/store/sqlite.py) and `PostgresStore`
(policy/store/postgres.py) are those subclasses; SQL is written with `?` placeholders and the
PostgreSQL store rewrites them to `$n`. Times are epoch seconds (double precision); JSON
values are stored as text.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from typing import Any

from policy.actor import SYSTEM
from policy.appeal import Appeal
from policy.approval import Approval
from policy.audit import GENESIS, AuditEvent, audit_time, seal
from policy.directive import Directive
from policy.errors import Conflict
from policy.recording import Recording
from policy.roster import Contact, Device, Facility, Inmate
from policy.session import SessionRecord
from policy.store.interface import AuditDraft, Cluster, Presence, Restoration, StoredState
from policy.visit import Visit

SCHEMA_VERSION = 5

# {real} is DOUBLE PRECISION on PostgreSQL: its REAL is only 4 bytes.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS facilities (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at {real} NOT NULL,
        max_visit_seconds {real}, recording INTEGER NOT NULL DEFAULT 1,
        recording_retention_days INTEGER NOT NULL DEFAULT 180,
        operators_play_recordings INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY, facility TEXT NOT NULL REFERENCES facilities(id),
        created_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS inmates (
        id TEXT PRIMARY KEY, facility TEXT NOT NULL REFERENCES facilities(id),
        name TEXT NOT NULL, created_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS contacts (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, minor INTEGER NOT NULL,
        created_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS approvals (
        contact TEXT NOT NULL REFERENCES contacts(id), inmate TEXT NOT NULL REFERENCES inmates(id),
        status TEXT NOT NULL, updated_at {real} NOT NULL, reason TEXT, decided_by TEXT,
        PRIMARY KEY (contact, inmate))""",
    # A minor's guardians (policy/guardian.py): adult contacts, set with `contact.guardians-set`.
    """CREATE TABLE IF NOT EXISTS guardians (
        minor TEXT NOT NULL REFERENCES contacts(id), guardian TEXT NOT NULL REFERENCES contacts(id),
        PRIMARY KEY (minor, guardian))""",
    """CREATE TABLE IF NOT EXISTS visits (
        id TEXT PRIMARY KEY, facility TEXT NOT NULL, inmate TEXT NOT NULL, device TEXT NOT NULL,
        contacts TEXT NOT NULL, starts_at {real} NOT NULL, ends_at {real} NOT NULL,
        kind TEXT NOT NULL, created_by TEXT NOT NULL, created_at {real} NOT NULL,
        status TEXT NOT NULL DEFAULT 'booked', version INTEGER NOT NULL DEFAULT 1,
        cancel_reason TEXT, cancel_note TEXT, cancelled_at {real}, cancelled_by TEXT,
        moved_from_starts_at {real}, moved_from_ends_at {real}, moved_at {real}, moved_by TEXT,
        closed_at {real})""",
    """CREATE INDEX IF NOT EXISTS visits_device ON visits (device, ends_at)""",
    """CREATE INDEX IF NOT EXISTS visits_window ON visits (starts_at)""",
    # A kiosk's presence (signaling/presence.py): its last online/offline transition, written
    # with that transition's audit event; heartbeats in between are not stored.
    """CREATE TABLE IF NOT EXISTS device_presence (
        device TEXT PRIMARY KEY, state TEXT NOT NULL, node TEXT NOT NULL,
        since {real} NOT NULL, last_seen {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, visit TEXT NOT NULL, sub TEXT NOT NULL, role TEXT NOT NULL,
        mode TEXT NOT NULL, node TEXT NOT NULL, keys TEXT NOT NULL,
        started_at {real} NOT NULL, ended_at {real}, end_reason TEXT)""",
    """CREATE INDEX IF NOT EXISTS sessions_live ON sessions (ended_at)""",
    """CREATE INDEX IF NOT EXISTS sessions_visit ON sessions (visit)""",
    """CREATE TABLE IF NOT EXISTS directives (
        id TEXT PRIMARY KEY, scope TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
        legal_basis TEXT NOT NULL, issued_by TEXT NOT NULL, issued_at {real} NOT NULL,
        starts_at {real} NOT NULL, expires_at {real} NOT NULL, status TEXT NOT NULL,
        confirm_by {real}, confirmed_by TEXT, confirmed_at {real}, closed_at {real},
        closed_by TEXT, close_reason TEXT, sessions_ended INTEGER NOT NULL DEFAULT 0,
        starts_on_confirmation INTEGER NOT NULL DEFAULT 0)""",
    """CREATE INDEX IF NOT EXISTS directives_status ON directives (status)""",
    """CREATE INDEX IF NOT EXISTS directives_scope ON directives (scope, closed_at)""",
    """CREATE TABLE IF NOT EXISTS appeals (
        id TEXT PRIMARY KEY, directive TEXT NOT NULL REFERENCES directives(id),
        filed_by TEXT NOT NULL, text TEXT NOT NULL, filed_at {real} NOT NULL,
        status TEXT NOT NULL, decided_by TEXT, decided_at {real}, decision_note TEXT)""",
    # One open appeal per person per directive (SPEC §4), enforced by the database itself so
    # that two concurrent filings cannot both pass: `ONE_OPEN_APPEAL` below, created after
    # `SUPERSEDE_DUPLICATE_APPEALS` has closed the duplicates an older database may hold.
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        subject TEXT NOT NULL, data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    # Recordings of social visits (policy/recording.py): file names, not paths.
    """CREATE TABLE IF NOT EXISTS recordings (
        id TEXT PRIMARY KEY, visit TEXT NOT NULL, facility TEXT NOT NULL, node TEXT NOT NULL,
        path TEXT NOT NULL, status TEXT NOT NULL, started_at {real} NOT NULL, ended_at {real},
        finalized_at {real}, media TEXT, parts TEXT NOT NULL DEFAULT '[]', sha256 TEXT, origin_at {real}, duration_seconds {real},
        incomplete_reason TEXT, failure TEXT, held_by TEXT, held_reason TEXT, held_ref TEXT,
        held_at {real}, deleted_at {real})""",
    """CREATE INDEX IF NOT EXISTS recordings_visit ON recordings (visit)""",
    """CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_at)""",
    # One row: the chain's head. Updating it in every write transaction serialises appends
    # across nodes (a row lock on PostgreSQL, the write lock on SQLite).
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL)""",
    # A recording's timeline reads its visit's events (`audit_about`).
    """CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject)""",
]


# Version 1 -> 2: facilities' maximum visit length, approval reasons, the visit's life
# (status, cancellation, reschedule, close), kiosk presence. The CREATE statements above
# already have these columns; a database made by version 1 gets them added.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        "ALTER TABLE facilities ADD COLUMN max_visit_seconds {real}",
        "ALTER TABLE approvals ADD COLUMN reason TEXT",
        "ALTER TABLE approvals ADD COLUMN decided_by TEXT",
        "ALTER TABLE visits ADD COLUMN status TEXT NOT NULL DEFAULT 'booked'",
        "ALTER TABLE visits ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE visits ADD COLUMN cancel_reason TEXT",
        "ALTER TABLE visits ADD COLUMN cancel_note TEXT",
        "ALTER TABLE visits ADD COLUMN cancelled_at {real}",
        "ALTER TABLE visits ADD COLUMN cancelled_by TEXT",
        "ALTER TABLE visits ADD COLUMN moved_from_starts_at {real}",
        "ALTER TABLE visits ADD COLUMN moved_from_ends_at {real}",
        "ALTER TABLE visits ADD COLUMN moved_at {real}",
        "ALTER TABLE visits ADD COLUMN moved_by TEXT",
        "ALTER TABLE visits ADD COLUMN closed_at {real}",
    ],
    # Version 2 -> 3: a directive may be a request that starts only when a second supervisor
    # confirms it.
    3: ["ALTER TABLE directives ADD COLUMN starts_on_confirmation INTEGER NOT NULL DEFAULT 0"],
    # Version 3 -> 4: a minor's guardians. SCHEMA's CREATE TABLE IF NOT EXISTS makes the table
    # in an older database already; the version records that it is there.
    4: [],
    # Version 4 -> 5: recordings (the table is created by SCHEMA) and the facility's
    # recording policy.
    5: [
        "ALTER TABLE facilities ADD COLUMN recording INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE facilities ADD COLUMN recording_retention_days INTEGER NOT NULL DEFAULT 180",
        "ALTER TABLE facilities ADD COLUMN operators_play_recordings INTEGER NOT NULL DEFAULT 0",
    ],
}


def migrations(version: int) -> list[str]:
    """The statements that bring a database of schema `version` to SCHEMA_VERSION; run after
    SCHEMA, whose CREATE TABLE IF NOT EXISTS leaves an old database's tables as they were."""
    return [ddl for v in range(version + 1, SCHEMA_VERSION + 1) for ddl in MIGRATIONS.get(v, [])]


# (sql, params) or (sql, params, guard): a guard (True, or the Conflict to raise) demands that
# the statement changes a row, otherwise the whole transaction is refused with that Conflict
# (optimistic guards; a bare True raises `state-changed`).
Statement = tuple[Any, ...]


def already_exists(exc: Exception) -> Conflict:
    """A write the database refused on a constraint (a duplicate id...), as the store says it."""
    conflict = Conflict("already-exists", f"conflicts with an existing record: {exc}")
    conflict.__cause__ = exc
    return conflict


def guard_failed(guard: list[Any]) -> Conflict:
    """The Conflict a failed guard raises (see `Statement`)."""
    if guard and isinstance(guard[0], Conflict):
        return guard[0]
    return Conflict("state-changed", "the record changed meanwhile; reload and retry")


# Partial unique indexes exist in SQLite (3.8) and PostgreSQL alike.
ONE_OPEN_APPEAL = (
    "CREATE UNIQUE INDEX IF NOT EXISTS appeals_one_open ON appeals (directive, filed_by)"
    " WHERE status = 'open'"
)
# A database from before `ONE_OPEN_APPEAL` may hold several open appeals of one person
# against one directive: all but the first filed are closed as `superseded` (the staff
# decide the first; the texts stay readable), with an audit event, before the index is made.
DUPLICATE_OPEN_APPEALS = (
    "SELECT a.id AS id FROM appeals a WHERE a.status = 'open' AND EXISTS ("
    " SELECT 1 FROM appeals b WHERE b.directive = a.directive AND b.filed_by = a.filed_by"
    " AND b.status = 'open' AND (b.filed_at < a.filed_at OR (b.filed_at = a.filed_at AND b.id < a.id)))"
    " ORDER BY a.id"
)
SUPERSEDED_NOTE = (
    "closed when the one-open-appeal rule came in: an earlier appeal of the same person is open"
)


def supersede_duplicates(ids: list[str], now: float) -> tuple[list[Statement], AuditDraft]:
    """The statements and audit event that close duplicate open appeals (see above)."""
    statements: list[Statement] = [
        ("UPDATE appeals SET status = 'superseded', decided_by = ?, decided_at = ?,"
         " decision_note = ? WHERE id = ? AND status = 'open'",
         (SYSTEM.sub, now, SUPERSEDED_NOTE, appeal_id))
        for appeal_id in ids
    ]  # fmt: skip
    draft = AuditDraft(
        SYSTEM.sub, "appeal.superseded", "store", {"appeals": ids, "note": SUPERSEDED_NOTE}
    )
    return statements, draft


DIRECTIVE_COLUMNS = (
    "id", "scope", "action", "reason", "legal_basis", "issued_by", "issued_at", "starts_at",
    "expires_at", "status", "confirm_by", "confirmed_by", "confirmed_at", "closed_at",
    "closed_by", "close_reason", "sessions_ended", "starts_on_confirmation",
)  # fmt: skip


def _directive_row(d: Directive) -> tuple[Any, ...]:
    row = tuple(getattr(d, column) for column in DIRECTIVE_COLUMNS[:-1])
    return row + (int(d.starts_on_confirmation),)


def _directive(row: dict[str, Any]) -> Directive:
    """A row as a directive; a read-only view of a version 1 database lacks the last column."""
    values = {column: row[column] for column in DIRECTIVE_COLUMNS[:-1]}
    return Directive(**values, starts_on_confirmation=bool(row.get("starts_on_confirmation")))


VISIT_COLUMNS = (
    "id", "facility", "inmate", "device", "contacts", "starts_at", "ends_at", "kind",
    "created_by", "created_at", "status", "version", "cancel_reason", "cancel_note",
    "cancelled_at", "cancelled_by", "moved_from_starts_at", "moved_from_ends_at", "moved_at",
    "moved_by", "closed_at",
)  # fmt: skip
# A booked visit at the kiosk whose window, widened by the buffer, overlaps [?, ?).
OVERLAPPING = (
    "SELECT * FROM visits WHERE device = ? AND status = 'booked' AND id <> ?"
    " AND starts_at < ? AND ends_at > ? ORDER BY starts_at"
)


def _visit_row(v: Visit) -> tuple[Any, ...]:
    moved = v.moved_from or (None, None)
    return (
        v.id, v.facility, v.inmate, v.device, json.dumps(list(v.contacts)), v.starts_at,
        v.ends_at, v.kind, v.created_by, v.created_at, v.status, v.version, v.cancel_reason,
        v.cancel_note, v.cancelled_at, v.cancelled_by, moved[0], moved[1], v.moved_at,
        v.moved_by, v.closed_at,
    )  # fmt: skip


def _insert(table: str, columns: tuple[str, ...], *, upsert: bool = False) -> str:
    """INSERT of every column; `upsert`: or, when the id exists, overwrite every other one
    (SQLite and PostgreSQL share the ON CONFLICT syntax)."""
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    if upsert:
        sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
        sql += f" ON CONFLICT (id) DO UPDATE SET {sets}"
    return sql


def _visit(row: dict[str, Any]) -> Visit:
    moved = row["moved_from_starts_at"], row["moved_from_ends_at"]
    return Visit(
        id=row["id"], facility=row["facility"], inmate=row["inmate"], device=row["device"],
        contacts=tuple(json.loads(row["contacts"])), starts_at=row["starts_at"],
        ends_at=row["ends_at"], kind=row["kind"], created_by=row["created_by"],
        created_at=row["created_at"], status=row["status"], version=int(row["version"]),
        cancel_reason=row["cancel_reason"], cancel_note=row["cancel_note"],
        cancelled_at=row["cancelled_at"], cancelled_by=row["cancelled_by"],
        moved_from=None if moved[0] is None else (moved[0], moved[1]), moved_at=row["moved_at"],
        moved_by=row["moved_by"], closed_at=row["closed_at"],
    )  # fmt: skip


def _approval(row: dict[str, Any]) -> Approval:
    return Approval(
        contact=row["contact"], inmate=row["inmate"], status=row["status"],
        updated_at=row["updated_at"], reason=row["reason"], decided_by=row["decided_by"],
    )  # fmt: skip


def _facility(row: dict[str, Any]) -> Facility:
    """A row as a facility; a read-only view of an older database lacks the recording columns."""
    return Facility(
        id=row["id"], name=row["name"], max_visit_seconds=row["max_visit_seconds"],
        recording=bool(row.get("recording", 1)),
        recording_retention_days=int(row.get("recording_retention_days", 180)),
        operators_play_recordings=bool(row.get("operators_play_recordings", 0)),
    )  # fmt: skip


RECORDING_COLUMNS = tuple(Recording.__dataclass_fields__)
RECORDING_HOLD = ("held_by", "held_reason", "held_ref", "held_at")
RECORDING_STATE = tuple(c for c in RECORDING_COLUMNS[1:] if c not in RECORDING_HOLD)


def _recording_value(r: Recording, column: str) -> Any:
    value = getattr(r, column)
    return json.dumps([list(part) for part in value]) if column == "parts" else value


def _recording_row(r: Recording) -> tuple[Any, ...]:
    return tuple(_recording_value(r, column) for column in RECORDING_COLUMNS)


def _recording(row: dict[str, Any]) -> Recording:
    values = {column: row[column] for column in RECORDING_COLUMNS}
    values["parts"] = tuple(tuple(part) for part in json.loads(values["parts"] or "[]"))
    return Recording(**values)


def _presence(row: dict[str, Any]) -> Presence:
    return Presence(
        device=row["device"], state=row["state"], node=row["node"], since=row["since"],
        last_seen=row["last_seen"],
    )  # fmt: skip


def _session(row: dict[str, Any]) -> SessionRecord:
    return SessionRecord(
        id=row["id"], visit=row["visit"], sub=row["sub"], role=row["role"], mode=row["mode"],
        node=row["node"], keys=tuple(json.loads(row["keys"])), started_at=row["started_at"],
        ended_at=row["ended_at"], end_reason=row["end_reason"],
    )  # fmt: skip


def _appeal(row: dict[str, Any]) -> Appeal:
    return Appeal(**{name: row[name] for name in Appeal.__dataclass_fields__})


def _audit(row: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        seq=row["seq"], at=row["at"], actor=row["actor"], action=row["action"],
        subject=row["subject"], data=json.loads(row["data"]), prev_hash=row["prev_hash"],
        hash=row["hash"],
    )  # fmt: skip


class SqlStore(ABC):
    """`Store` on SQL. Subclasses provide `_write`, `_fetch` and the lifecycle."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.head_seq = 0  # the highest audit sequence number this process knows of
        self._advanced = asyncio.Event()
        # False only in a read-only view of a database from before schema version 4 (a
        # node's open brings any database up to date): it has no guardians yet.
        self.guardians_table = True
        # ... and from before version 5: no recordings yet.
        self.recordings_table = True

    def noticed(self, seq: int) -> None:
        """Record that the audit log reached `seq` (a local commit, or another node's on the bus)
        and wake everyone tailing it (the staff event stream)."""
        if seq > self.head_seq:
            self.head_seq = seq
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Wait until the audit log passes `seq`; False on timeout."""
        if self.head_seq > seq:
            return True
        try:
            await asyncio.wait_for(self._advanced.wait(), timeout)
        except TimeoutError:
            return False
        return self.head_seq > seq

    @property
    def cluster(self) -> Cluster | None:
        """A store only this node uses: no cluster (PostgresStore overrides this)."""
        return None

    # -- backend primitives -------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _write(self, statements: list[Statement], audit: AuditDraft) -> AuditEvent:
        """Run the statements and append the audit event in one durable transaction."""

    @abstractmethod
    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def _snapshot(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        """Run read-only queries in one transaction: they all see the same moment."""

    async def ping(self) -> None:
        await self._fetch("SELECT 1 AS one")

    async def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = await self._fetch(sql, params)
        return rows[0] if rows else None

    # -- roster -------------------------------------------------------------------------
    async def add_facility(self, facility: Facility, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("INSERT INTO facilities (id, name, max_visit_seconds, recording,"
              " recording_retention_days, operators_play_recordings, created_at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?)",
              (facility.id, facility.name, facility.max_visit_seconds, int(facility.recording),
               facility.recording_retention_days, int(facility.operators_play_recordings),
               self.clock()))], audit)  # fmt: skip

    async def update_facility(self, facility: Facility, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("UPDATE facilities SET name = ?, max_visit_seconds = ?, recording = ?,"
              " recording_retention_days = ?, operators_play_recordings = ? WHERE id = ?",
              (facility.name, facility.max_visit_seconds, int(facility.recording),
               facility.recording_retention_days, int(facility.operators_play_recordings),
               facility.id), True)], audit)  # fmt: skip

    async def add_device(self, device: Device, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("INSERT INTO devices (id, facility, created_at) VALUES (?, ?, ?)",
              (device.id, device.facility, self.clock()))], audit)  # fmt: skip

    async def add_inmate(self, inmate: Inmate, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("INSERT INTO inmates (id, facility, name, created_at) VALUES (?, ?, ?, ?)",
              (inmate.id, inmate.facility, inmate.name, self.clock()))], audit)  # fmt: skip

    async def update_inmate(self, inmate: Inmate, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("UPDATE inmates SET name = ? WHERE id = ?", (inmate.name, inmate.id), True)], audit
        )

    async def add_contact(self, contact: Contact, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("INSERT INTO contacts (id, name, minor, created_at) VALUES (?, ?, ?, ?)",
              (contact.id, contact.name, int(contact.minor), self.clock()))], audit)  # fmt: skip

    async def update_contact(self, contact: Contact, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("UPDATE contacts SET name = ?, minor = ? WHERE id = ?",
              (contact.name, int(contact.minor), contact.id), True)], audit)  # fmt: skip

    async def set_approval(
        self, contact: str, inmate: str, status: str, audit: AuditDraft,
        *, reason: str | None = None, by: str | None = None,
    ) -> AuditEvent:  # fmt: skip
        return await self._write(
            [("DELETE FROM approvals WHERE contact = ? AND inmate = ?", (contact, inmate)),
             ("INSERT INTO approvals (contact, inmate, status, updated_at, reason, decided_by)"
              " VALUES (?, ?, ?, ?, ?, ?)", (contact, inmate, status, self.clock(), reason, by))],
            audit)  # fmt: skip

    async def set_guardians(
        self, minor: str, guardians: tuple[str, ...], audit: AuditDraft
    ) -> AuditEvent:
        statements: list[Statement] = [("DELETE FROM guardians WHERE minor = ?", (minor,))]
        statements += [
            ("INSERT INTO guardians (minor, guardian) VALUES (?, ?)", (minor, g)) for g in guardians
        ]
        return await self._write(statements, audit)

    async def wards_of(self, guardian: str) -> list[str]:
        return [r["minor"] for r in await self._guardians("WHERE guardian = ?", (guardian,))]

    async def _guardians(
        self, where: str = "", params: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        if not self.guardians_table:
            return []
        return await self._fetch(
            f"SELECT minor, guardian FROM guardians {where} ORDER BY minor, guardian", params
        )

    async def get_approval(self, contact: str, inmate: str) -> Approval | None:
        row = await self._one(
            "SELECT * FROM approvals WHERE contact = ? AND inmate = ?", (contact, inmate)
        )
        return _approval(row) if row else None

    async def list_approvals(
        self, *, status: str | None = None, contact: str | None = None
    ) -> list[Approval]:
        sql, params = "SELECT * FROM approvals WHERE 1 = 1", tuple[Any, ...]()
        if status is not None:
            sql, params = sql + " AND status = ?", params + (status,)
        if contact is not None:
            sql, params = sql + " AND contact = ?", params + (contact,)
        rows = await self._fetch(sql + " ORDER BY updated_at, contact, inmate", params)
        return [_approval(r) for r in rows]

    async def get_facility(self, facility_id: str) -> Facility | None:
        row = await self._one("SELECT * FROM facilities WHERE id = ?", (facility_id,))
        return _facility(row) if row else None

    async def list_facilities(self) -> list[Facility]:
        return [_facility(r) for r in await self._fetch("SELECT * FROM facilities ORDER BY id")]

    async def get_device(self, device_id: str) -> Device | None:
        row = await self._one("SELECT id, facility FROM devices WHERE id = ?", (device_id,))
        return Device(**row) if row else None

    async def list_devices(self) -> list[Device]:
        return [
            Device(**r) for r in await self._fetch("SELECT id, facility FROM devices ORDER BY id")
        ]

    async def get_inmate(self, inmate_id: str) -> Inmate | None:
        row = await self._one("SELECT id, facility, name FROM inmates WHERE id = ?", (inmate_id,))
        return Inmate(**row) if row else None

    async def list_inmates(self) -> list[Inmate]:
        rows = await self._fetch("SELECT id, facility, name FROM inmates ORDER BY id")
        return [Inmate(**r) for r in rows]

    async def get_contact(self, contact_id: str) -> Contact | None:
        row = await self._one("SELECT id, name, minor FROM contacts WHERE id = ?", (contact_id,))
        if row is None:
            return None
        approvals = await self._fetch(
            "SELECT inmate, status FROM approvals WHERE contact = ? ORDER BY inmate", (contact_id,)
        )
        guardians = await self._guardians("WHERE minor = ?", (contact_id,))
        return Contact(
            id=row["id"], name=row["name"], minor=bool(row["minor"]),
            approvals={a["inmate"]: a["status"] for a in approvals},
            guardians=tuple(g["guardian"] for g in guardians),
        )  # fmt: skip

    async def list_contacts(self) -> list[Contact]:
        rows = await self._fetch("SELECT id, name, minor FROM contacts ORDER BY id")
        approvals: dict[str, dict[str, str]] = {}
        for a in await self._fetch("SELECT contact, inmate, status FROM approvals"):
            approvals.setdefault(a["contact"], {})[a["inmate"]] = a["status"]
        guardians: dict[str, list[str]] = {}
        for g in await self._guardians():
            guardians.setdefault(g["minor"], []).append(g["guardian"])
        return [
            Contact(
                id=r["id"],
                name=r["name"],
                minor=bool(r["minor"]),
                approvals=approvals.get(r["id"], {}),
                guardians=tuple(guardians.get(r["id"], ())),
            )
            for r in rows
        ]

    # -- visits -------------------------------------------------------------------------
    def _kiosk_free(self, visit: Visit, buffer: float | None) -> list[Statement]:
        """The statements that keep a kiosk from being double-booked, inside the write's
        transaction: lock the device row (on PostgreSQL, a second booking of the same kiosk
        waits here for the first to commit), then, in a statement of its own (a fresh
        snapshot, so the first booking is seen), refuse unless no other booked visit overlaps
        the window widened by `buffer`. SQLite has one writer: the lock is a no-op there."""
        if buffer is None or not visit.booked:
            return []
        taken = Conflict(
            "double-booked",
            f"kiosk {visit.device} is booked at that time (visits need {buffer / 60:g} minutes"
            " between them)",
        )
        return [
            ("UPDATE devices SET created_at = created_at WHERE id = ?", (visit.device,)),
            ("UPDATE devices SET created_at = created_at WHERE id = ? AND NOT EXISTS ("
             "SELECT 1 FROM visits WHERE device = ? AND status = 'booked' AND id <> ?"
             " AND starts_at < ? AND ends_at > ?)",
             (visit.device, visit.device, visit.id, visit.ends_at + buffer,
              visit.starts_at - buffer), taken),
        ]  # fmt: skip

    async def add_visit(
        self, visit: Visit, audit: AuditDraft, *, buffer: float | None = None
    ) -> AuditEvent:
        """Insert a visit; with `buffer` (seconds), only if its kiosk is free then."""
        insert = (_insert("visits", VISIT_COLUMNS), _visit_row(visit))
        return await self._write([*self._kiosk_free(visit, buffer), insert], audit)

    async def update_visit(
        self, visit: Visit, audit: AuditDraft, *, buffer: float | None = None
    ) -> AuditEvent:
        """Replace a visit's state, only from the version before it (else `Conflict`: someone
        changed it meanwhile); with `buffer`, only if its kiosk is free in its new window."""
        sets = ", ".join(f"{c} = ?" for c in VISIT_COLUMNS[1:])
        update = (f"UPDATE visits SET {sets} WHERE id = ? AND version = ?",
                  _visit_row(visit)[1:] + (visit.id, visit.version - 1), True)  # fmt: skip
        return await self._write([*self._kiosk_free(visit, buffer), update], audit)

    async def overlapping(self, device: str, starts_at: float, ends_at: float, *,
                          exclude: str = "") -> list[Visit]:  # fmt: skip
        """Booked visits at `device` overlapping [starts_at, ends_at), but `exclude`."""
        rows = await self._fetch(OVERLAPPING, (device, exclude, ends_at, starts_at))
        return [_visit(r) for r in rows]

    async def get_visit(self, visit_id: str) -> Visit | None:
        row = await self._one("SELECT * FROM visits WHERE id = ?", (visit_id,))
        return _visit(row) if row else None

    async def list_visits(
        self, *, device: str | None = None, after: float | None = None,
        before: float | None = None, status: str | None = None, facility: str | None = None,
        inmate: str | None = None, contact: str | None = None,
    ) -> list[Visit]:  # fmt: skip
        """Visits, by start; `after`: ending after it, `before`: starting before it."""
        sql, params = "SELECT * FROM visits WHERE 1 = 1", tuple[Any, ...]()
        for column, value in (("device", device), ("status", status), ("facility", facility),
                              ("inmate", inmate)):  # fmt: skip
            if value is not None:
                sql, params = sql + f" AND {column} = ?", params + (value,)
        if after is not None:
            sql, params = sql + " AND ends_at > ?", params + (after,)
        if before is not None:
            sql, params = sql + " AND starts_at < ?", params + (before,)
        if contact is not None:  # ids are [A-Za-z0-9_.-]: the quoted id matches one element
            sql, params = sql + " AND contacts LIKE ?", params + (f'%"{contact}"%',)
        return [_visit(r) for r in await self._fetch(sql + " ORDER BY starts_at, id", params)]

    # -- sessions -----------------------------------------------------------------------
    async def session_started(self, record: SessionRecord, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("INSERT INTO sessions (id, visit, sub, role, mode, node, keys, started_at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (record.id, record.visit, record.sub, record.role, record.mode, record.node,
               json.dumps(list(record.keys)), record.started_at))], audit)  # fmt: skip

    async def session_ended(
        self, session_id: str, ended_at: float, reason: str, audit: AuditDraft
    ) -> AuditEvent:
        return await self._write(
            [("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
              (ended_at, reason, session_id))], audit)  # fmt: skip

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._one("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _session(row) if row else None

    async def list_sessions(
        self, *, live: bool = True, node: str | None = None, visit: str | None = None
    ) -> list[SessionRecord]:
        sql, params = "SELECT * FROM sessions WHERE 1 = 1", tuple[Any, ...]()
        if live:
            sql += " AND ended_at IS NULL"
        if node is not None:
            sql, params = sql + " AND node = ?", params + (node,)
        if visit is not None:
            sql, params = sql + " AND visit = ?", params + (visit,)
        return [_session(r) for r in await self._fetch(sql + " ORDER BY started_at", params)]

    async def end_orphan_sessions(self, node: str, reason: str, audit: AuditDraft) -> AuditEvent:
        """On start-up: sessions this node left open when it died ended with it."""
        return await self._write(
            [("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE node = ? AND ended_at IS NULL",
              (self.clock(), reason, node))], audit)  # fmt: skip

    # -- directives and appeals ---------------------------------------------------------
    async def add_directive(self, directive: Directive, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [(_insert("directives", DIRECTIVE_COLUMNS), _directive_row(directive))], audit
        )

    async def update_directive(
        self, directive: Directive, audit: AuditDraft, *, expect_status: str | None = None
    ) -> AuditEvent:
        """Replace a directive's mutable state; with `expect_status`, only from that status.

        The guard makes concurrent lifts/lapses on different nodes safe: the loser's
        transaction changes nothing and raises Conflict, so its audit event is not written.
        """
        sets = ", ".join(f"{c} = ?" for c in DIRECTIVE_COLUMNS[1:])
        sql = f"UPDATE directives SET {sets} WHERE id = ?"
        params = _directive_row(directive)[1:] + (directive.id,)
        if expect_status is None:
            return await self._write([(sql, params)], audit)
        return await self._write(
            [(sql + " AND status = ?", params + (expect_status,), True)], audit
        )

    async def count_enforcement(
        self, directive_id: str, ended: int, audit: AuditDraft
    ) -> AuditEvent:
        """Add `ended` to a directive's count of ended sessions, in place: whatever else
        changed meanwhile (a lift, another node's count) stays as it is."""
        return await self._write(
            [
                (
                    "UPDATE directives SET sessions_ended = sessions_ended + ? WHERE id = ?",
                    (ended, directive_id),
                )
            ],
            audit,
        )

    async def get_directive(self, directive_id: str) -> Directive | None:
        row = await self._one("SELECT * FROM directives WHERE id = ?", (directive_id,))
        return _directive(row) if row else None

    async def list_directives(
        self,
        *,
        status: str | None = None,
        scope: str | None = None,
        closed_after: float | None = None,
    ) -> list[Directive]:
        sql, params = "SELECT * FROM directives WHERE 1 = 1", tuple[Any, ...]()
        if status is not None:
            sql, params = sql + " AND status = ?", params + (status,)
        if scope is not None:
            sql, params = sql + " AND scope = ?", params + (scope,)
        if closed_after is not None:
            sql, params = (
                sql + " AND (closed_at IS NULL OR closed_at > ?)",
                params + (closed_after,),
            )
        rows = await self._fetch(sql + " ORDER BY issued_at DESC, id", params)
        return [_directive(r) for r in rows]

    async def add_appeal(self, appeal: Appeal, audit: AuditDraft) -> AuditEvent:
        names = tuple(Appeal.__dataclass_fields__)
        return await self._write(
            [(f"INSERT INTO appeals ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
              tuple(getattr(appeal, n) for n in names))], audit)  # fmt: skip

    async def decide_appeal(self, appeal: Appeal, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [("UPDATE appeals SET status = ?, decided_by = ?, decided_at = ?, decision_note = ?"
              " WHERE id = ? AND status = 'open'",
              (appeal.status, appeal.decided_by, appeal.decided_at, appeal.decision_note, appeal.id),
              True)], audit)  # fmt: skip

    async def get_appeal(self, appeal_id: str) -> Appeal | None:
        row = await self._one("SELECT * FROM appeals WHERE id = ?", (appeal_id,))
        return _appeal(row) if row else None

    async def list_appeals(self, *, directive: str | None = None) -> list[Appeal]:
        if directive is None:
            rows = await self._fetch("SELECT * FROM appeals ORDER BY filed_at")
        else:
            rows = await self._fetch(
                "SELECT * FROM appeals WHERE directive = ? ORDER BY filed_at", (directive,)
            )
        return [_appeal(r) for r in rows]

    # -- recordings -------------------------------------------------------------------------
    async def add_recording(self, recording: Recording, audit: AuditDraft) -> AuditEvent:
        return await self._write(
            [(_insert("recordings", RECORDING_COLUMNS), _recording_row(recording))], audit
        )

    async def update_recording(
        self, recording: Recording, audit: AuditDraft, *, expect_status: str
    ) -> AuditEvent:
        """Replace a recording's state but its hold (`hold_recording`'s), only from
        `expect_status`, and a deletion only while unheld (else `Conflict`: two nodes
        sweeping, a hold set meanwhile: one wins, the other writes nothing)."""
        sets = ", ".join(f"{c} = ?" for c in RECORDING_STATE)
        values = tuple(_recording_value(recording, c) for c in RECORDING_STATE)
        unheld = " AND held_by IS NULL" if recording.status == "deleted" else ""
        return await self._write(
            [(f"UPDATE recordings SET {sets} WHERE id = ? AND status = ?{unheld}",
              values + (recording.id, expect_status), True)],
            audit)  # fmt: skip

    async def hold_recording(
        self, recording: Recording, audit: AuditDraft, *, was_held: bool
    ) -> AuditEvent:
        """Set or release a hold, only if the recording is not deleted and its hold is still
        `was_held` (so a sweep that deleted it meanwhile, or a second hold, is a `Conflict`)."""
        held = "held_by IS NOT NULL" if was_held else "held_by IS NULL"
        return await self._write(
            [("UPDATE recordings SET held_by = ?, held_reason = ?, held_ref = ?, held_at = ?"
              f" WHERE id = ? AND status <> 'deleted' AND {held}",
              (recording.held_by, recording.held_reason, recording.held_ref, recording.held_at,
               recording.id), True)], audit)  # fmt: skip

    async def get_recording(self, recording_id: str) -> Recording | None:
        row = await self._one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
        return _recording(row) if row else None

    async def list_recordings(
        self, *, visit: str | None = None, facility: str | None = None,
        after: float | None = None, before: float | None = None, status: str | None = None,
    ) -> list[Recording]:  # fmt: skip
        """Recordings, newest first; `after`/`before`: started at or after, before."""
        sql, params = "SELECT * FROM recordings WHERE 1 = 1", tuple[Any, ...]()
        for column, value in (("visit", visit), ("facility", facility), ("status", status)):
            if value is not None:
                sql, params = sql + f" AND {column} = ?", params + (value,)
        if after is not None:
            sql, params = sql + " AND started_at >= ?", params + (after,)
        if before is not None:
            sql, params = sql + " AND started_at < ?", params + (before,)
        rows = await self._fetch(sql + " ORDER BY started_at DESC, id", params)
        return [_recording(r) for r in rows]

    # -- kiosk presence -------------------------------------------------------------------
    async def set_presence(
        self, presence: Presence, audit: AuditDraft, *, expect_node: str | None = None
    ) -> AuditEvent:
        """Record a kiosk's transition; with `expect_node`, only while that node holds it
        online (else `Conflict`: it went online elsewhere meanwhile, and nothing is written)."""
        row = (presence.state, presence.node, presence.since, presence.last_seen, presence.device)
        if expect_node is not None:
            return await self._write(
                [("UPDATE device_presence SET state = ?, node = ?, since = ?, last_seen = ?"
                  " WHERE device = ? AND node = ? AND state = 'online'", row + (expect_node,),
                  True)], audit)  # fmt: skip
        return await self._write(
            [("DELETE FROM device_presence WHERE device = ?", (presence.device,)),
             ("INSERT INTO device_presence (state, node, since, last_seen, device)"
              " VALUES (?, ?, ?, ?, ?)", row)], audit)  # fmt: skip

    async def list_presence(self, *, node: str | None = None) -> list[Presence]:
        if node is None:
            rows = await self._fetch("SELECT * FROM device_presence ORDER BY device")
        else:
            rows = await self._fetch(
                "SELECT * FROM device_presence WHERE node = ? ORDER BY device", (node,)
            )
        return [_presence(r) for r in rows]

    # -- audit --------------------------------------------------------------------------
    async def audit_events(self, *, after: int = 0, limit: int | None = None) -> list[AuditEvent]:
        sql: str = "SELECT * FROM audit WHERE seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (after,)
        if limit is not None:
            sql, params = sql + " LIMIT ?", params + (limit,)
        return [_audit(r) for r in await self._fetch(sql, params)]

    async def audit_about(self, subject: str) -> list[AuditEvent]:
        rows = await self._fetch("SELECT * FROM audit WHERE subject = ? ORDER BY seq", (subject,))
        return [_audit(r) for r in rows]

    async def audit_chain(self) -> tuple[list[AuditEvent], tuple[int, str]]:
        """Every event and the chain's head (seq, hash), read in one statement so that no
        write falls between them: `verify_chain(*await store.audit_chain())`."""
        rows = await self._fetch(
            "SELECT h.seq AS head_seq, h.hash AS head_hash, a.* FROM audit_head h"
            " LEFT JOIN audit a ON 1 = 1 WHERE h.id = 1 ORDER BY a.seq"
        )
        head = (rows[0]["head_seq"], rows[0]["head_hash"]) if rows else (0, GENESIS)
        return [_audit(r) for r in rows if r["seq"] is not None], head

    async def audit(self, draft: AuditDraft) -> AuditEvent:
        """An audit event with no other state change (e.g. a refused monitor join)."""
        return await self._write([], draft)

    # -- the state as a projection of the chain (policy/replay.py) ----------------------
    async def state(self) -> StoredState:
        """The audit chain and the rows it projects to, read in one snapshot."""
        read = await self._snapshot(
            [
                "SELECT h.seq AS head_seq, h.hash AS head_hash, a.* FROM audit_head h"
                " LEFT JOIN audit a ON 1 = 1 WHERE h.id = 1 ORDER BY a.seq",
                "SELECT * FROM directives ORDER BY id",
                "SELECT contact, inmate, status FROM approvals ORDER BY contact, inmate",
                "SELECT * FROM visits ORDER BY id",
                "SELECT * FROM facilities ORDER BY id",
                *(["SELECT minor, guardian FROM guardians ORDER BY minor, guardian"]
                  if self.guardians_table else []),
                *(["SELECT * FROM recordings ORDER BY id"] if self.recordings_table else []),
            ]
        )  # fmt: skip
        chain, directives, approvals, visits, facilities = read[:5]
        guardians = read[5] if self.guardians_table else []
        recordings = read[-1] if self.recordings_table else []
        wards: dict[str, tuple[str, ...]] = {}
        for g in guardians:
            wards[g["minor"]] = (*wards.get(g["minor"], ()), g["guardian"])
        head = (chain[0]["head_seq"], chain[0]["head_hash"]) if chain else (0, GENESIS)
        return StoredState(
            events=[_audit(r) for r in chain if r["seq"] is not None],
            head=head,
            directives={r["id"]: _directive(r) for r in directives},
            approvals={(r["contact"], r["inmate"]): r["status"] for r in approvals},
            visits={r["id"]: _visit(r) for r in visits},
            recordings={r["id"]: _recording(r) for r in recordings},
            facilities={r["id"]: _facility(r) for r in facilities},
            guardians=wards,
        )

    async def restore(self, restoration: Restoration, audit: AuditDraft) -> AuditEvent:
        """Make the rows what the chain implies, with `audit`, in one transaction: only if
        no event was written since the state was read (else `Conflict`: read it again)."""
        statements: list[Statement] = [
            ("UPDATE audit_head SET seq = seq WHERE id = 1 AND seq = ?", (restoration.head,), True)
        ]
        upsert = _insert("directives", DIRECTIVE_COLUMNS, upsert=True)
        statements += [(upsert, _directive_row(d)) for d in restoration.directives]
        statements += [
            ("DELETE FROM directives WHERE id = ?", (i,)) for i in restoration.stray_directives
        ]
        for (contact, inmate), status in restoration.approvals.items():
            statements.append(
                ("DELETE FROM approvals WHERE contact = ? AND inmate = ?", (contact, inmate))
            )
            if status is not None:
                statements.append(
                    ("INSERT INTO approvals (contact, inmate, status, updated_at) VALUES (?, ?, ?, ?)",
                     (contact, inmate, status, self.clock()))
                )  # fmt: skip
        upsert = _insert("visits", VISIT_COLUMNS, upsert=True)
        statements += [(upsert, _visit_row(v)) for v in restoration.visits]
        statements += [("DELETE FROM visits WHERE id = ?", (i,)) for i in restoration.stray_visits]
        statements += [
            ("UPDATE facilities SET name = ?, max_visit_seconds = ?, recording = ?,"
             " recording_retention_days = ?, operators_play_recordings = ? WHERE id = ?",
             (f.name, f.max_visit_seconds, int(f.recording), f.recording_retention_days,
              int(f.operators_play_recordings), f.id))
            for f in restoration.facilities
        ]  # fmt: skip
        upsert = _insert("recordings", RECORDING_COLUMNS, upsert=True)
        statements += [(upsert, _recording_row(r)) for r in restoration.recordings]
        statements += [
            ("DELETE FROM recordings WHERE id = ?", (i,)) for i in restoration.stray_recordings
        ]
        for minor, guardians in restoration.guardians.items():
            statements.append(("DELETE FROM guardians WHERE minor = ?", (minor,)))
            statements += [
                ("INSERT INTO guardians (minor, guardian) VALUES (?, ?)", (minor, g))
                for g in guardians
            ]
        return await self._write(statements, audit)


def seal_next(head_seq: int, head_hash: str, draft: AuditDraft, now: float) -> AuditEvent:
    seq = head_seq + 1
    at = audit_time(now)
    digest = seal(seq, at, draft.actor, draft.action, draft.subject, draft.data, head_hash)
    return AuditEvent(
        seq, at, draft.actor, draft.action, draft.subject, draft.data, head_hash, digest
    )
