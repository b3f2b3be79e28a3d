"""On PostgreSQL, a database made by the schema version before requests (a directive that
starts when a second supervisor confirms it), or before recordings, is brought up to date
when a node opens it."""

from __future__ import annotations

import asyncpg
import pytest

from policy.directive import Directive
from policy.recording import Recording
from policy.roster import Contact, Facility
from policy.store import AuditDraft
from policy.store.postgres import PostgresStore
from policy.store.sql import SCHEMA_VERSION

REQUESTS_VERSION = 3  # the schema version that brought requests (starts_on_confirmation)
GUARDIANS_VERSION = 4  # the one that brought a minor's guardians
RECORDINGS_VERSION = 5  # ... and the one that brought recordings

pytestmark = pytest.mark.cluster

T0 = 1_700_000_000.0
UNDO_RECORDINGS = (
    "DROP TABLE recordings",
    *(f"ALTER TABLE facilities DROP COLUMN {column}"
      for column in ("recording", "recording_retention_days", "operators_play_recordings")),
)  # fmt: skip


def directive(id: str, **changes: object) -> Directive:
    return Directive(
        id=id, scope="system", action="suspend", reason="r", legal_basis="Rule 1",
        issued_by="operator:alice", issued_at=T0, starts_at=T0, expires_at=T0 + 3600,
    ).with_changes(**changes)  # fmt: skip


async def as_version(pg_url: str, version: int, *undo: str) -> None:
    """Make the database what schema `version` made: `undo` what came after it."""
    conn = await asyncpg.connect(pg_url)
    try:
        for statement in undo:
            await conn.execute(statement)
        await conn.execute("UPDATE schema_version SET version = $1", version)
    finally:
        await conn.close()


async def version_now(pg_url: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval("SELECT version FROM schema_version")
    finally:
        await conn.close()


async def test_a_database_from_before_requests_gets_their_column(pg_url):
    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    await store.add_directive(directive("D1"), AuditDraft("operator:alice", "t", "t:1", {}))
    await store.close()
    await as_version(
        pg_url, REQUESTS_VERSION - 1,
        "ALTER TABLE directives DROP COLUMN starts_on_confirmation", "DROP TABLE guardians",
        *UNDO_RECORDINGS,
    )  # fmt: skip

    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    try:
        assert await store.get_directive("D1") == directive("D1")
        request = directive("D2", status="pending", starts_on_confirmation=True)
        await store.add_directive(request, AuditDraft("operator:alice", "t", "t:2", {}))
        assert await store.get_directive("D2") == request
    finally:
        await store.close()
    assert await version_now(pg_url) == SCHEMA_VERSION


async def test_a_database_from_before_guardians_gets_their_table(pg_url):
    """The schema version before a minor's guardians: the table is made, guardians set after
    the upgrade read back on the contact and in the state replayed."""
    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    for contact in (Contact("M1", "Mia", True, {}), Contact("G1", "Gail", False, {})):
        await store.add_contact(contact, AuditDraft("operator:alice", "t", "t:c", {}))
    await store.close()
    await as_version(pg_url, GUARDIANS_VERSION - 1, "DROP TABLE guardians", *UNDO_RECORDINGS)
    viewer = PostgresStore(pg_url, clock=lambda: T0, read_only=True)  # `audit verify` first
    await viewer.open()
    try:
        assert (await viewer.state()).guardians == {}
        assert (await viewer.get_contact("M1")).guardians == ()
    finally:
        await viewer.close()

    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    try:
        assert (await store.get_contact("M1")).guardians == ()
        await store.set_guardians("M1", ("G1",), AuditDraft("operator:alice", "t", "t:g", {}))
        assert (await store.get_contact("M1")).guardians == ("G1",)
        assert await store.wards_of("G1") == ["M1"]
        assert (await store.state()).guardians == {"M1": ("G1",)}
    finally:
        await store.close()
    assert await version_now(pg_url) == SCHEMA_VERSION


async def test_a_database_from_before_recordings_gets_the_policy_columns_and_table(pg_url):
    store = PostgresStore(pg_url, clock=lambda: T0)
    await store.open()
    await store.add_facility(Facility("F1", "North"), AuditDraft("operator:alice", "t", "t:1", {}))
    await store.close()
    await as_version(pg_url, RECORDINGS_VERSION - 1, *UNDO_RECORDINGS)

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
    assert await version_now(pg_url) == SCHEMA_VERSION
