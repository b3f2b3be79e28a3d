"""The same store checks against SQLite and PostgreSQL: what one store returns, the other does.

Records round-trip to equal dataclasses, every write appends exactly one sealed audit event
whose `data` reads back as the dict it was sealed with, refused writes leave nothing behind,
and (PostgreSQL) concurrent writers on two connections pools still form one unbroken chain.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from policy.appeal import Appeal
from policy.audit import GENESIS, verify_chain
from policy.directive import Directive
from policy.errors import Conflict, StoreUnavailable
from policy.roster import Contact, Device, Facility, Inmate
from policy.session import SessionRecord
from policy.store import AuditDraft, SqliteStore, Store, open_store
from policy.store.postgres import PostgresStore
from policy.visit import Visit
from tests.harness.pg import PostgresServer
from tests.harness.ports import free_port

pytestmark = pytest.mark.cluster

T0 = 1_700_000_000.123456


def draft(action: str = "test.write", subject: str = "test:1", **data: Any) -> AuditDraft:
    return AuditDraft("operator:alice", action, subject, dict(data))


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    database = None
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "parlor.db", clock=lambda: T0)
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        database = await postgres.create_database()
        s = open_store(postgres.url(database), clock=lambda: T0)
        assert isinstance(s, PostgresStore)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if database is not None:
            await request.getfixturevalue("postgres").drop_database(database)


async def roster(store: Store) -> None:
    await store.add_facility(Facility("F1", "North"), draft("facility.created", "facility:F1"))
    await store.add_device(Device("K1", "F1"), draft("device.created", "device:K1"))
    await store.add_inmate(Inmate("I1", "F1", "Sam"), draft("inmate.created", "inmate:I1"))
    await store.add_contact(Contact("C1", "Ana", True, {}), draft("contact.created", "contact:C1"))


def a_visit() -> Visit:
    return Visit(
        "V1", "F1", "I1", "K1", ("C1",), T0, T0 + 3600.5, "privileged", "operator:alice", T0 - 5
    )


def a_directive(**changes: Any) -> Directive:
    d = Directive(
        id="D1", scope="contact:C1", action="suspend", reason="threats", legal_basis="Rule 7.1",
        issued_by="operator:alice", issued_at=T0, starts_at=T0, expires_at=T0 + 86400.25,
        confirm_by=T0 + 900,
    )  # fmt: skip
    return d.with_changes(**changes)


async def test_every_record_round_trips(store: Store) -> None:
    await roster(store)
    await store.set_approval("C1", "I1", "approved", draft())
    assert await store.get_contact("C1") == Contact("C1", "Ana", True, {"I1": "approved"})
    assert await store.list_inmates() == [Inmate("I1", "F1", "Sam")]

    await store.add_visit(a_visit(), draft())
    assert await store.get_visit("V1") == a_visit()
    assert await store.list_visits(device="K1", after=T0 + 3600) == [a_visit()]

    record = SessionRecord("S1", "V1", "contact:C1", "family", "participant", "node-a",
                           ("system", "contact:C1", "pair:I1:C1"), T0 + 1.5)  # fmt: skip
    await store.session_started(record, draft())
    assert await store.get_session("S1") == record
    assert await store.list_sessions(node="node-a") == [record]
    await store.session_ended("S1", T0 + 60.25, "directive:D1", draft())
    ended = await store.get_session("S1")
    assert ended is not None and (ended.ended_at, ended.end_reason) == (T0 + 60.25, "directive:D1")
    assert await store.list_sessions() == []

    await store.add_directive(a_directive(), draft())
    assert await store.get_directive("D1") == a_directive()
    lifted = a_directive(
        status="lifted", closed_at=T0 + 5, closed_by="operator:bob", close_reason="ok"
    )
    await store.update_directive(lifted, draft(), expect_status="active")
    assert await store.list_directives(status="lifted") == [lifted]
    # counting ended sessions adds in place and leaves the lift alone
    await store.count_enforcement("D1", 2, draft())
    await store.count_enforcement("D1", 3, draft())
    assert await store.get_directive("D1") == lifted.with_changes(sessions_ended=5)

    appeal = Appeal("A1", "D1", "contact:C1", "Ich habe nichts getan — 申し立て", T0 + 10)
    await store.add_appeal(appeal, draft())
    assert await store.get_appeal("A1") == appeal


async def test_audit_data_reads_back_as_sealed_and_the_chain_verifies(store: Store) -> None:
    payloads: list[dict[str, Any]] = [
        {},
        {"text": 'é ü 中文 \u2028 "quoted" \\ back', "emoji": "📞"},
        {"nested": {"list": [1, 2.5, None, True, False, "x"], "deep": {"a": {"b": []}}}},
        {"float": 0.1 + 0.2, "big": 2**53 + 1, "negative": -1e-300, "zero": 0.0},
        {"z": 1, "a": 2, "m": {"y": 1, "b": 2}},  # key order must not matter
    ]
    sealed = [await store.audit(draft("test.data", "test:data", **p)) for p in payloads]
    events = await store.audit_events()
    assert [e.data for e in events] == payloads
    assert events == sealed  # what the writer sealed is exactly what a reader gets
    assert events[0].prev_hash == GENESIS
    report = verify_chain(events)
    assert report.ok and report.events == len(payloads)


async def test_tampering_is_detected_at_the_edited_row(store: Store) -> None:
    for i in range(5):
        await store.audit(draft("test.tamper", "test:t", i=i))
    await store._fetch("UPDATE audit SET data = ? WHERE seq = ?", ('{"i": 99}', 3))
    report = verify_chain(await store.audit_events())
    assert (report.ok, report.first_bad) == (False, 3)


async def test_refused_writes_leave_no_row_and_no_event(store: Store) -> None:
    await roster(store)
    before = await store.audit_events()
    with pytest.raises(Conflict):  # unique violation
        await store.add_facility(Facility("F1", "Again"), draft())
    with pytest.raises(Conflict):  # foreign key violation
        await store.add_device(Device("K2", "F-nope"), draft())
    with pytest.raises(Conflict):  # the optimistic guard, after a statement that succeeded
        await store._write(
            [("INSERT INTO facilities (id, name, created_at) VALUES (?, ?, ?)", ("F2", "South", T0)),
             ("UPDATE directives SET status = 'lifted' WHERE id = ?", ("D-nope",), True)],
            draft(),
        )  # fmt: skip
    assert await store.get_facility("F2") is None
    assert await store.get_device("K2") is None
    assert await store.audit_events() == before


async def test_paging_the_audit_log(store: Store) -> None:
    for i in range(7):
        await store.audit(draft(i=i))
    assert [e.seq for e in await store.audit_events(after=2, limit=3)] == [3, 4, 5]
    assert [e.seq for e in await store.audit_events(after=6)] == [7]


# -- PostgreSQL only --------------------------------------------------------------------
async def test_concurrent_writers_on_two_nodes_form_one_chain(postgres: PostgresServer) -> None:
    database = await postgres.create_database()
    stores = [PostgresStore(postgres.url(database)) for _ in range(3)]
    try:
        # Three nodes starting at once on an empty database: the advisory lock serialises DDL.
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(
            *(
                s.audit(draft("test.race", f"node:{n}", i=i))
                for i in range(40)
                for n, s in enumerate(stores)
            )
        )
        events = await stores[0].audit_events()
        assert [e.seq for e in events] == list(range(1, 121))
        assert verify_chain(events).ok
        assert await stores[1].audit_head() == 120
    finally:
        for s in stores:
            await s.close()
        await postgres.drop_database(database)


async def test_two_nodes_booking_one_kiosk_at_once_one_wins(postgres: PostgresServer) -> None:
    """The double-booking guard inside the transaction: the kiosk's row is locked, then the
    overlap is read by a statement of its own (READ COMMITTED: a fresh snapshot, which sees
    the booking that held the lock). Without the lock both read "free" and both insert."""
    database = await postgres.create_database()
    stores = [PostgresStore(postgres.url(database)) for _ in range(2)]
    try:
        for s in stores:
            await s.open()
        await roster(stores[0])
        for round_ in range(20):
            start = T0 + round_ * 86400
            visits = [
                replace(a_visit(), id=f"V{round_}-{n}", starts_at=start + n * 60,
                        ends_at=start + 1800 + n * 60, kind="social")
                for n in range(2)
            ]  # fmt: skip
            outcomes = await asyncio.gather(
                *(s.add_visit(v, draft(), buffer=300) for s, v in zip(stores, visits, strict=True)),
                return_exceptions=True,
            )
            won = [o for o in outcomes if not isinstance(o, BaseException)]
            lost = [o for o in outcomes if isinstance(o, Conflict)]
            assert (len(won), len(lost)) == (1, 1), (round_, outcomes)
            assert lost[0].code == "double-booked"
        assert len(await stores[0].list_visits(device="K1")) == 20
    finally:
        for s in stores:
            await s.close()
        await postgres.drop_database(database)


async def test_an_unreachable_database_is_store_unavailable() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert caught.value.kind == "unavailable"
    with pytest.raises(StoreUnavailable):
        await store.list_facilities()


async def test_a_read_only_store_reads_the_chain_and_the_database_refuses_writes(
    store: Store, tmp_path: Path
) -> None:
    """What `parlor audit verify` opens: an auditor's tool must not be able to change anything."""
    await roster(store)
    url = str(store.path) if isinstance(store, SqliteStore) else store.url  # type: ignore[attr-defined]
    reader = open_store(url, read_only=True)
    await reader.open()
    try:
        events, head = await reader.audit_chain()
        assert verify_chain(events, head).ok and head[0] == 4 == reader.head_seq
        refused = (
            (sqlite3.OperationalError,)
            if isinstance(reader, SqliteStore)
            else (asyncpg.exceptions.ReadOnlySQLTransactionError,)
        )
        with pytest.raises(refused, match="read-?only"):
            await reader.add_facility(
                Facility("F9", "Nope"), draft("facility.created", "facility:F9")
            )
    finally:
        await reader.close()
    assert await store.get_facility("F9") is None


async def test_a_store_forgets_the_pid_of_a_connection_it_no_longer_has(
    postgres: PostgresServer,
) -> None:
    """A node recognises its own notifications by the sending backend's PID. Once its
    connection closes, the server may give that PID to another node's backend, whose
    events must then not pass for this node's own."""
    database = await postgres.create_database()
    store = PostgresStore(postgres.url(database))
    await store.open()
    try:
        await roster(store)
        assert len(store._writers) >= 1
    finally:
        await store.close()
        await postgres.drop_database(database)
    await asyncio.sleep(0)  # termination listeners run on the next loop iteration
    assert store._writers == set()
