"""SqliteStore: every domain record round-trips, and every write lands with its audit event."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from policy.appeal import Appeal
from policy.audit import GENESIS, verify_chain
from policy.directive import Directive
from policy.errors import Conflict
from policy.recording import Recording
from policy.roster import Contact, Device, Facility, Inmate
from policy.session import SessionRecord
from policy.store import AuditDraft, SqliteStore
from policy.store.sql import SCHEMA_VERSION
from policy.visit import Visit

REQUESTS_VERSION = 3  # the schema version that brought requests (starts_on_confirmation)
GUARDIANS_VERSION = 4  # the one that brought a minor's guardians
RECORDINGS_VERSION = 5  # ... and the one that brought recordings

T0 = 1_700_000_000.0


def draft(action: str = "test.write", subject: str = "test:1", **data: object) -> AuditDraft:
    return AuditDraft("operator:alice", action, subject, dict(data))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "parlor.db", clock=lambda: T0)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def roster(store: SqliteStore) -> None:
    await store.add_facility(Facility("F1", "North"), draft("facility.created", "facility:F1"))
    await store.add_device(Device("K1", "F1"), draft("device.created", "device:K1"))
    await store.add_inmate(Inmate("I1", "F1", "Sam"), draft("inmate.created", "inmate:I1"))
    await store.add_contact(Contact("C1", "Ana", True, {}), draft("contact.created", "contact:C1"))


def visit(id: str = "V1", contacts: tuple[str, ...] = ("C1",)) -> Visit:
    return Visit(
        id, "F1", "I1", "K1", contacts, T0, T0 + 3600, "privileged", "operator:alice", T0 - 5
    )


def directive(id: str = "D1", **changes: object) -> Directive:
    d = Directive(
        id=id, scope="contact:C1", action="suspend", reason="threats", legal_basis="Rule 7.1",
        issued_by="operator:alice", issued_at=T0, starts_at=T0, expires_at=T0 + 86400,
    )  # fmt: skip
    return d.with_changes(**changes)


def raw_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


async def test_roster_round_trips(store):
    await roster(store)
    assert await store.get_facility("F1") == Facility("F1", "North")
    assert await store.get_device("K1") == Device("K1", "F1")
    assert await store.get_inmate("I1") == Inmate("I1", "F1", "Sam")
    assert await store.get_contact("C1") == Contact("C1", "Ana", True, {})
    assert await store.list_facilities() == [Facility("F1", "North")]
    assert await store.list_devices() == [Device("K1", "F1")]
    assert await store.list_inmates() == [Inmate("I1", "F1", "Sam")]
    assert await store.list_contacts() == [Contact("C1", "Ana", True, {})]
    for getter in (store.get_facility, store.get_device, store.get_inmate, store.get_contact):
        assert await getter("nope") is None


async def test_approvals_round_trip_and_replace(store):
    await roster(store)
    await store.set_approval("C1", "I1", "pending", draft())
    assert (await store.get_contact("C1")).approvals == {"I1": "pending"}
    await store.set_approval("C1", "I1", "approved", draft())
    assert (await store.get_contact("C1")).approvals == {"I1": "approved"}
    assert (await store.list_contacts())[0].approvals == {"I1": "approved"}
    assert raw_count(store.path, "approvals") == 1


async def test_visit_round_trips(store):
    await roster(store)
    v = visit()
    await store.add_visit(v, draft("visit.created", "visit:V1"))
    assert await store.get_visit("V1") == v
    assert await store.list_visits() == [v]
    assert await store.list_visits(device="K1") == [v]
    assert await store.list_visits(device="K9") == []
    assert await store.list_visits(after=T0 + 3600) == []  # ended visits are filtered out
    assert await store.list_visits(after=T0 + 3599) == [v]
    assert await store.get_visit("nope") is None


async def test_session_round_trips_and_ends(store):
    record = SessionRecord("S1", "V1", "contact:C1", "family", "call", "node-a",
                           ("system", "contact:C1"), T0)  # fmt: skip
    other = SessionRecord("S2", "V1", "device:K1", "kiosk", "call", "node-b", ("system",), T0 + 1)
    await store.session_started(record, draft())
    await store.session_started(other, draft())
    assert await store.get_session("S1") == record
    assert [s.id for s in await store.list_sessions()] == ["S1", "S2"]
    assert [s.id for s in await store.list_sessions(node="node-b")] == ["S2"]

    await store.session_ended("S1", T0 + 60, "directive:D1", draft())
    ended = await store.get_session("S1")
    assert (ended.ended_at, ended.end_reason) == (T0 + 60, "directive:D1")
    assert [s.id for s in await store.list_sessions()] == ["S2"]
    assert [s.id for s in await store.list_sessions(live=False)] == ["S1", "S2"]

    await store.end_orphan_sessions("node-b", "error", draft())
    assert await store.list_sessions() == []
    assert (await store.get_session("S2")).end_reason == "error"
    assert (await store.get_session("S1")).end_reason == "directive:D1"  # untouched


async def test_directive_round_trips_and_guarded_update(store):
    d = directive(confirm_by=T0 + 900)
    await store.add_directive(d, draft())
    assert await store.get_directive("D1") == d
    assert await store.list_directives() == [d]
    assert await store.list_directives(status="active") == [d]
    assert await store.list_directives(status="lifted") == []

    lifted = d.with_changes(
        status="lifted", closed_at=T0 + 5, closed_by="operator:bob", close_reason="ok"
    )
    await store.update_directive(lifted, draft(), expect_status="active")
    assert await store.get_directive("D1") == lifted
    events_before = len(await store.audit_events())
    # A second close from a stale copy must change nothing and write no audit event.
    with pytest.raises(Conflict):
        await store.update_directive(
            d.with_changes(status="expired"), draft(), expect_status="active"
        )
    assert (await store.get_directive("D1")).status == "lifted"
    assert len(await store.audit_events()) == events_before


async def test_appeal_round_trips_and_decides_once(store):
    await store.add_directive(directive(), draft())
    appeal = Appeal("A1", "D1", "contact:C1", "I did nothing wrong", T0 + 10)
    await store.add_appeal(appeal, draft())
    assert await store.get_appeal("A1") == appeal
    assert await store.list_appeals() == [appeal]
    assert await store.list_appeals(directive="D1") == [appeal]
    assert await store.list_appeals(directive="D2") == []

    decided = Appeal("A1", "D1", "contact:C1", "I did nothing wrong", T0 + 10, "upheld",
                     "operator:bob", T0 + 20, "the recording confirms it")  # fmt: skip
    await store.decide_appeal(decided, draft())
    assert await store.get_appeal("A1") == decided
    with pytest.raises(Conflict):
        await store.decide_appeal(decided, draft())


async def test_appeal_for_unknown_directive_is_refused(store):
    with pytest.raises(Conflict):
        await store.add_appeal(Appeal("A1", "D-nope", "contact:C1", "text", T0), draft())
    assert await store.list_appeals() == []


@pytest.mark.parametrize(
    "add",
    [
        lambda s: s.add_facility(Facility("F1", "Again"), draft()),
        lambda s: s.add_device(Device("K1", "F1"), draft()),
        lambda s: s.add_inmate(Inmate("I1", "F1", "Again"), draft()),
        lambda s: s.add_contact(Contact("C1", "Again", False, {}), draft()),
        lambda s: s.add_visit(visit(), draft()),
        lambda s: s.add_directive(directive(), draft()),
        lambda s: s.session_started(
            SessionRecord("S1", "V1", "device:K1", "kiosk", "call", "n", (), T0), draft()
        ),
        lambda s: s.add_appeal(Appeal("A1", "D1", "contact:C1", "again", T0), draft()),
    ],
    ids=["facility", "device", "inmate", "contact", "visit", "directive", "session", "appeal"],
)
async def test_duplicate_id_is_a_conflict_and_writes_no_audit(store, add):
    await roster(store)
    await store.add_visit(visit(), draft())
    await store.add_directive(directive(), draft())
    await store.session_started(
        SessionRecord("S1", "V1", "device:K1", "kiosk", "call", "n", (), T0), draft()
    )
    await store.add_appeal(Appeal("A1", "D1", "contact:C1", "text", T0), draft())
    before = await store.audit_events()
    with pytest.raises(Conflict) as caught:
        await add(store)
    assert caught.value.kind == "conflict"
    assert await store.audit_events() == before


async def test_wal_and_synchronous_full(store):
    assert (await store._fetch("PRAGMA journal_mode"))[0]["journal_mode"] == "wal"
    assert (await store._fetch("PRAGMA synchronous"))[0]["synchronous"] == 2  # FULL
    assert (await store._fetch("PRAGMA foreign_keys"))[0]["foreign_keys"] == 1
    with sqlite3.connect(store.path) as conn:  # WAL is a property of the file, seen by anyone
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_schema_creation_is_idempotent(tmp_path):
    path = tmp_path / "deep" / "dir" / "parlor.db"
    first = SqliteStore(path, clock=lambda: T0)
    await first.open()
    await roster(first)
    events = await first.audit_events()
    await first.close()

    second = SqliteStore(path, clock=lambda: T0 + 1)
    await second.open()
    try:
        assert await second.get_facility("F1") == Facility("F1", "North")
        assert await second.audit_events() == events
        assert raw_count(path, "schema_version") == 1
        assert raw_count(path, "audit_head") == 1
        # The chain continues from the stored head, not from genesis.
        event = await second.add_facility(Facility("F2", "South"), draft())
        assert event.seq == len(events) + 1 and event.prev_hash == events[-1].hash
        assert verify_chain(await second.audit_events()).ok
    finally:
        await second.close()


def drop_recording_policy(conn: sqlite3.Connection) -> None:
    """Make a database's facilities and tables what they were before recordings."""
    conn.execute("DROP TABLE recordings")
    for column in ("recording", "recording_retention_days", "operators_play_recordings"):
        conn.execute(f"ALTER TABLE facilities DROP COLUMN {column}")


async def test_a_database_from_before_recordings_gets_the_policy_columns_and_table(tmp_path):
    """A database of the version before recordings opens: its facilities read with the default
    policy (recorded, 180 days, operators may not play) and recordings can be written."""
    path = tmp_path / "parlor.db"
    first = SqliteStore(path, clock=lambda: T0)
    await first.open()
    await roster(first)
    await first.close()
    with sqlite3.connect(path) as conn:
        drop_recording_policy(conn)
        conn.execute("UPDATE schema_version SET version = ?", (RECORDINGS_VERSION - 1,))

    second = SqliteStore(path, clock=lambda: T0)
    await second.open()
    try:
        assert await second.get_facility("F1") == Facility("F1", "North")
        facility = Facility("F1", "North", recording=False, recording_retention_days=30)
        await second.update_facility(facility, draft())
        assert await second.get_facility("F1") == facility
        recording = Recording("R1", "V1", "F1", "n1", "V1-00.rec", "recording", T0)
        await second.add_recording(recording, draft())
        assert await second.list_recordings(visit="V1") == [recording]
    finally:
        await second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_database_from_before_requests_gets_their_column(tmp_path):
    """A database made by the schema version before requests (a directive that starts when a
    second supervisor confirms it) opens, its directives read as ordinary ones, and a request
    written after the upgrade reads back as one."""
    path = tmp_path / "parlor.db"
    first = SqliteStore(path, clock=lambda: T0)
    await first.open()
    await roster(first)
    await first.add_directive(directive("D1"), draft())
    await first.close()
    with sqlite3.connect(path) as conn:  # what the version before made
        conn.execute("ALTER TABLE directives DROP COLUMN starts_on_confirmation")
        drop_recording_policy(conn)
        conn.execute("DROP TABLE guardians")
        conn.execute("UPDATE schema_version SET version = ?", (REQUESTS_VERSION - 1,))

    second = SqliteStore(path, clock=lambda: T0)
    await second.open()
    try:
        assert await second.get_directive("D1") == directive("D1")
        request = directive("D2", status="pending", starts_on_confirmation=True)
        await second.add_directive(request, draft())
        assert await second.get_directive("D2") == request
    finally:
        await second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_database_from_before_guardians_gets_their_table(tmp_path):
    """A database of the schema version before guardians opens with none, and a minor's
    guardians set after the upgrade read back, on the contact and in the state replayed."""
    path = tmp_path / "parlor.db"
    first = SqliteStore(path, clock=lambda: T0)
    await first.open()
    await roster(first)
    await first.add_contact(
        Contact("G1", "Gail", False, {}), draft("contact.created", "contact:G1")
    )
    await first.close()
    with sqlite3.connect(path) as conn:  # what the version before made
        conn.execute("DROP TABLE guardians")
        drop_recording_policy(conn)
        conn.execute("UPDATE schema_version SET version = ?", (GUARDIANS_VERSION - 1,))
    viewer = SqliteStore(path, clock=lambda: T0, read_only=True)  # `audit verify` before a node
    await viewer.open()
    try:
        assert (await viewer.state()).guardians == {}
        assert (await viewer.get_contact("C1")).guardians == ()
    finally:
        await viewer.close()

    second = SqliteStore(path, clock=lambda: T0)
    await second.open()
    try:
        assert (await second.get_contact("C1")).guardians == ()
        await second.set_guardians("C1", ("G1",), draft("contact.guardians-set", "contact:C1"))
        assert (await second.get_contact("C1")).guardians == ("G1",)
        assert [c.guardians for c in await second.list_contacts()] == [("G1",), ()]
        assert await second.wards_of("G1") == ["C1"]
        assert (await second.state()).guardians == {"C1": ("G1",)}
    finally:
        await second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_every_write_appends_one_sealed_event(store):
    await roster(store)
    events = await store.audit_events()
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [e.action for e in events] == [
        "facility.created",
        "device.created",
        "inmate.created",
        "contact.created",
    ]
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:], strict=False))
    assert [e.seq for e in await store.audit_events(after=2)] == [3, 4]
    assert [e.seq for e in await store.audit_events(after=1, limit=2)] == [2, 3]
    assert verify_chain(events).ok


async def test_a_failing_statement_leaves_neither_row_nor_audit_event(store):
    await roster(store)
    before = await store.audit_events()
    # The first statement succeeds, the second violates the primary key: both must roll back.
    with pytest.raises(Conflict):
        await store._write(
            [("INSERT INTO facilities (id, name, created_at) VALUES (?, ?, ?)", ("F2", "South", T0)),
             ("INSERT INTO facilities (id, name, created_at) VALUES (?, ?, ?)", ("F1", "Dup", T0))],
            draft("facility.created", "facility:F2"),
        )  # fmt: skip
    assert await store.get_facility("F2") is None
    assert await store.audit_events() == before
    assert raw_count(store.path, "audit") == len(before)


async def test_a_foreign_key_violation_is_rolled_back_with_its_audit_event(store):
    await roster(store)
    before = await store.audit_events()
    # set_approval deletes then inserts; the insert names an unknown inmate.
    await store.set_approval("C1", "I1", "approved", draft())
    with pytest.raises(Conflict):
        await store.set_approval("C1", "I-nope", "approved", draft())
    with pytest.raises(Conflict):
        await store.add_device(Device("K2", "F-nope"), draft())
    assert (await store.get_contact("C1")).approvals == {"I1": "approved"}
    assert await store.get_device("K2") is None
    assert len(await store.audit_events()) == len(before) + 1


async def test_a_failing_guard_rolls_back_earlier_statements(store):
    await roster(store)
    before = await store.audit_events()
    with pytest.raises(Conflict):
        await store._write(
            [("INSERT INTO facilities (id, name, created_at) VALUES (?, ?, ?)", ("F2", "South", T0)),
             ("UPDATE directives SET status = 'lifted' WHERE id = ?", ("D-nope",), True)],
            draft(),
        )  # fmt: skip
    assert await store.get_facility("F2") is None
    assert await store.audit_events() == before


async def test_audit_without_state_change(store):
    event = await store.audit(draft("monitor.refused", "visit:V1", reason="privileged"))
    assert event.seq == 1
    assert (await store.audit_events())[0].data == {"reason": "privileged"}


async def test_a_closed_store_is_unavailable(tmp_path):
    from policy.errors import StoreUnavailable

    s = SqliteStore(tmp_path / "p.db")
    await s.open()
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.list_facilities()


def session(n: int) -> SessionRecord:
    return SessionRecord(f"S{n}", "V1", f"contact:C{n}", "family", "participant", "n", (), T0)


async def test_concurrent_writes_commit_together_and_each_is_durable_when_answered(store):
    await roster(store)
    before = len(await store.audit_events())
    durable: list[bool] = []

    async def start(n: int) -> None:
        await store.session_started(session(n), draft("session.started", f"session:S{n}"))
        with sqlite3.connect(store.path) as other:  # another connection: committed, not cached
            found = other.execute("SELECT 1 FROM sessions WHERE id = ?", (f"S{n}",)).fetchone()
        durable.append(found is not None)

    await asyncio.gather(*(start(n) for n in range(30)))
    assert durable == [True] * 30
    events = (await store.audit_events())[before:]
    assert sorted(e.subject for e in events) == sorted(f"session:S{n}" for n in range(30))
    assert [e.seq for e in events] == list(range(before + 1, before + 31))
    assert verify_chain(await store.audit_events()).ok


async def test_a_refused_write_in_a_group_is_rolled_back_alone(store):
    await roster(store)
    await store.session_started(session(5), draft())
    before = await store.audit_events()
    outcomes = await asyncio.gather(
        *(store.session_started(session(n), draft("session.started", f"session:S{n}"))
          for n in range(10)),
        return_exceptions=True,
    )  # fmt: skip
    refused = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, Exception)]
    assert refused == [5] and isinstance(outcomes[5], Conflict)
    events = await store.audit_events()
    assert len(events) == len(before) + 9
    assert {e.subject for e in events[len(before) :]} == {
        f"session:S{n}" for n in range(10) if n != 5
    }
    assert sorted(s.id for s in await store.list_sessions()) == [f"S{n}" for n in range(10)]
    assert verify_chain(events).ok


async def test_concurrent_writes_share_commits(tmp_path):
    """The group commit, seen in the write-ahead log: 30 writes at once write far fewer log
    pages than the same 30 one after another (each commit writes its pages again)."""

    async def wal_size(name: str, together: bool) -> int:
        s = SqliteStore(tmp_path / name, clock=lambda: T0)
        await s.open()
        try:
            await roster(s)
            start = (tmp_path / f"{name}-wal").stat().st_size
            writes = [s.session_started(session(n), draft()) for n in range(30)]
            if together:
                await asyncio.gather(*writes)
            else:
                for write in writes:
                    await write
            return (tmp_path / f"{name}-wal").stat().st_size - start
        finally:
            await s.close()

    one_by_one, together = await wal_size("a.db", False), await wal_size("b.db", True)
    assert together * 3 < one_by_one, (together, one_by_one)
