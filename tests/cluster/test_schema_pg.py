"""On PostgreSQL, a database made by the schema version before requests (a directive that
starts when a second supervisor confirms it), or before recordings, is brought up to date
when a node opens it."""

from __future__ import annotations

import asyncpg
import pytest

from policy.directive import Directive
from policy.recording import Recording
from policy.roster import Facility
from policy.store import AuditDraft
from policy.store.postgres import PostgresStore
from policy.store.sql import SCHEMA_VERSION

pytestmark = pytest.mark.cluster

T0 = 1_700_000_000.0
REQUESTS_VERSION = 3  # the schema version that brought requests
RECORDINGS_VERSION = 4  # ... and the one that brought recordings


async def drop_recording_policy(conn: asyncpg.Connection) -> None:
    await conn.execute("DROP TABLE recordings")
    for column in ("recording", "recording_retention_days", "operators_play_recordings"):
        await conn.execute(f"ALTER TABLE facilities DROP COLUMN {column}")


def directive(id: str, **changes: object) -> Directive:
    return Directive(
        id=id, scope="system", action="suspend", reason="r", legal_basis="Rule 1",
        issued_by="operator:alice", issued_at=T0, starts_at=T0, expires_at=T0 + 3600,
    ).with_changes(**changes)  # fmt: skip


async def test_a_database_from_before_requests_gets_their_column(pg_url):
    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    await store.add_directive(directive("D1"), AuditDraft("operator:alice", "t", "t:1", {}))
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:  # what the version before made
        await conn.execute("ALTER TABLE directives DROP COLUMN starts_on_confirmation")
        await drop_recording_policy(conn)
        await conn.execute("UPDATE schema_version SET version = $1", REQUESTS_VERSION - 1)
    finally:
        await conn.close()

    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    try:
        assert await store.get_directive("D1") == directive("D1")
        request = directive("D2", status="pending", starts_on_confirmation=True)
        await store.add_directive(request, AuditDraft("operator:alice", "t", "t:2", {}))
        assert await store.get_directive("D2") == request
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT version FROM schema_version") == SCHEMA_VERSION
    finally:
        await conn.close()


async def test_a_database_from_before_recordings_gets_the_policy_columns_and_table(pg_url):
    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    await store.add_facility(Facility("F1", "North"), AuditDraft("operator:alice", "t", "t:1", {}))
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await drop_recording_policy(conn)
        await conn.execute("UPDATE schema_version SET version = $1", RECORDINGS_VERSION - 1)
    finally:
        await conn.close()

    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    try:
        assert await store.get_facility("F1") == Facility("F1", "North")
        facility = Facility("F1", "North", recording=False, operators_play_recordings=True)
        await store.update_facility(facility, AuditDraft("operator:alice", "t", "t:2", {}))
        assert await store.get_facility("F1") == facility
        recording = Recording("R1", "V1", "F1", "n1", "V1-00.rec", "recording", T0)
        await store.add_recording(recording, AuditDraft("system:parlor", "t", "t:3", {}))
        assert await store.get_recording("R1") == recording
    finally:
        await store.close()
