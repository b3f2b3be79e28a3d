"""The audit hash chain: it verifies, and every kind of tampering is caught at the right row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from policy.audit import GENESIS, AuditEvent, canonical_json, seal, verify_chain
from policy.store import AuditDraft, SqliteStore

EVENTS = 6


async def build_chain(path: Path, n: int = EVENTS) -> list[AuditEvent]:
    store = SqliteStore(path)
    await store.open()
    try:
        for i in range(1, n + 1):
            await store.audit(
                AuditDraft(f"operator:op{i}", "test.event", f"thing:{i}", {"n": i, "text": "é"})
            )
        return await store.audit_events()
    finally:
        await store.close()


async def reread(path: Path) -> tuple[list[AuditEvent], tuple[int, str]]:
    """The events and the stored head, as `parlor audit verify` and the API read them."""
    store = SqliteStore(path)
    await store.open()
    try:
        return await store.audit_chain()
    finally:
        await store.close()


def tamper(path: Path, sql: str, params: tuple = ()) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql, params)


@pytest.fixture
async def chain(tmp_path: Path) -> Path:
    path = tmp_path / "parlor.db"
    await build_chain(path)
    return path


async def test_an_untouched_chain_verifies(chain):
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (True, EVENTS, None)
    last = (await reread(chain))[0][-1]
    assert report.to_json() == {
        "ok": True, "events": EVENTS, "first_bad": None,
        "head": {"seq": EVENTS, "hash": last.hash}, "anchors_checked": 0,
    }  # fmt: skip


def test_an_empty_chain_verifies():
    assert verify_chain([]).to_json() == {
        "ok": True, "events": 0, "first_bad": None,
        "head": {"seq": 0, "hash": GENESIS}, "anchors_checked": 0,
    }  # fmt: skip


def test_seal_is_the_sha256_of_the_canonical_form():
    import hashlib

    body = {"seq": 1, "at": "2024-01-01T00:00:00.000000Z", "actor": "a", "action": "b",
            "subject": "c", "data": {"z": 1, "a": "é"}, "prev": GENESIS}  # fmt: skip
    expected = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    assert seal(1, body["at"], "a", "b", "c", {"a": "é", "z": 1}, GENESIS) == expected
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE audit SET data = ? WHERE seq = 3", (json.dumps({"n": 3, "text": "changed"}),)),
        ("UPDATE audit SET actor = 'operator:mallory' WHERE seq = 3", ()),
        ("UPDATE audit SET action = 'test.other' WHERE seq = 3", ()),
        ("UPDATE audit SET subject = 'thing:99' WHERE seq = 3", ()),
        ("UPDATE audit SET at = '2000-01-01T00:00:00.000000Z' WHERE seq = 3", ()),
        ("UPDATE audit SET hash = ? WHERE seq = 3", ("f" * 64,)),
        ("UPDATE audit SET prev_hash = ? WHERE seq = 3", ("e" * 64,)),
    ],
    ids=["data", "actor", "action", "subject", "at", "hash", "prev_hash"],
)
async def test_editing_a_row_is_caught_at_that_row(chain, sql, params):
    tamper(chain, sql, params)
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (False, EVENTS, 3)


async def test_a_resealed_edit_is_caught_at_the_next_row(chain):
    """An editor who recomputes the edited row's own hash still breaks its successor's link."""
    events, _ = await reread(chain)
    e = events[2]
    data = {"n": 3, "text": "forged"}
    forged = seal(e.seq, e.at, e.actor, e.action, e.subject, data, e.prev_hash)
    tamper(chain, "UPDATE audit SET data = ?, hash = ? WHERE seq = 3", (json.dumps(data), forged))
    assert verify_chain(*await reread(chain)).first_bad == 4


async def test_deleting_a_row_is_caught_where_the_gap_is(chain):
    tamper(chain, "DELETE FROM audit WHERE seq = 3")
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (False, EVENTS - 1, 4)


async def test_deleting_the_first_row_is_caught(chain):
    tamper(chain, "DELETE FROM audit WHERE seq = 1")
    assert verify_chain(*await reread(chain)).first_bad == 2


async def test_reordering_two_rows_is_caught_at_the_first_moved(chain):
    with sqlite3.connect(chain) as conn:
        conn.execute("UPDATE audit SET seq = -1 WHERE seq = 2")
        conn.execute("UPDATE audit SET seq = 2 WHERE seq = 4")
        conn.execute("UPDATE audit SET seq = 4 WHERE seq = -1")
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (False, EVENTS, 2)


async def test_inserting_a_forged_row_is_caught(chain):
    events, _ = await reread(chain)
    last = events[-1]
    # A row appended without knowing how to seal it.
    tamper(chain, "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
           (last.seq + 1, last.at, "operator:mallory", "x", "y", "{}", last.hash, "0" * 64))  # fmt: skip
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (False, EVENTS + 1, EVENTS + 1)


async def test_truncating_the_tail_is_caught_against_the_head(chain):
    """Deleting the newest events leaves a self-consistent prefix; the stored head exposes it."""
    tamper(chain, f"DELETE FROM audit WHERE seq > {EVENTS - 2}")
    events, head = await reread(chain)
    assert verify_chain(events).ok  # the prefix alone is consistent...
    report = verify_chain(events, head)  # ...but the head says two more events existed
    assert (report.ok, report.events, report.first_bad) == (False, EVENTS - 2, EVENTS - 1)


async def test_deleting_every_row_is_caught(chain):
    tamper(chain, "DELETE FROM audit")
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (False, 0, 1)


async def test_appending_a_correctly_sealed_row_is_caught_against_the_head(chain):
    events, _ = await reread(chain)
    last = events[-1]
    seq, at, data = last.seq + 1, last.at, {"forged": True}
    digest = seal(seq, at, "operator:mallory", "directive.lifted", "directive:D1", data, last.hash)
    tamper(chain, "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
           (seq, at, "operator:mallory", "directive.lifted", "directive:D1", json.dumps(data), last.hash, digest))  # fmt: skip
    report = verify_chain(*await reread(chain))
    assert (report.ok, report.events, report.first_bad) == (False, EVENTS + 1, EVENTS + 1)


async def test_resealing_the_last_row_is_caught_against_the_head(chain):
    events, _ = await reread(chain)
    e = events[-1]
    data = {"n": EVENTS, "text": "rewritten"}
    digest = seal(e.seq, e.at, e.actor, e.action, e.subject, data, e.prev_hash)
    tamper(
        chain,
        "UPDATE audit SET data = ?, hash = ? WHERE seq = ?",
        (json.dumps(data), digest, e.seq),
    )
    assert verify_chain(*await reread(chain)).first_bad == EVENTS


async def test_events_counts_every_event_even_after_the_first_bad_one(chain):
    tamper(chain, "UPDATE audit SET actor = 'x' WHERE seq = 1")
    tamper(chain, "UPDATE audit SET actor = 'y' WHERE seq = 5")
    report = verify_chain(*await reread(chain))
    assert (report.events, report.first_bad) == (EVENTS, 1)


def test_in_memory_events_verify_without_a_store():
    prev, events = GENESIS, []
    for seq in range(1, 4):
        at = f"2024-01-01T00:00:0{seq}.000000Z"
        digest = seal(seq, at, "a", "b", "c", {"seq": seq}, prev)
        events.append(AuditEvent(seq, at, "a", "b", "c", {"seq": seq}, prev, digest))
        prev = digest
    assert verify_chain(events).ok
    assert verify_chain(events[1:]).first_bad == 2  # the chain must start at genesis, seq 1


# -- anchors: heads recorded outside the database -----------------------------------------------
async def test_a_chain_rewritten_and_sealed_again_is_caught_by_an_anchor(chain):
    events, head = await reread(chain)
    anchors = {3: events[2].hash, EVENTS: events[-1].hash}
    assert verify_chain(events, head, anchors).to_json()["anchors_checked"] == 2
    assert verify_chain(events, head, anchors).ok
    # rewrite event 2 and re-seal everything after it, head included: consistent in itself
    forged, prev = [], GENESIS
    for e in events:
        actor = "operator:mallory" if e.seq == 2 else e.actor
        digest = seal(e.seq, e.at, actor, e.action, e.subject, e.data, prev)
        forged.append(AuditEvent(e.seq, e.at, actor, e.action, e.subject, e.data, prev, digest))
        prev = digest
    assert verify_chain(forged, (EVENTS, prev)).ok
    report = verify_chain(forged, (EVENTS, prev), anchors)
    assert (report.ok, report.first_bad) == (False, 3)  # the first anchored event it changed


async def test_an_anchor_past_the_end_means_events_were_removed(chain):
    events, _ = await reread(chain)
    report = verify_chain(events[:-2], None, {EVENTS: events[-1].hash})
    assert (report.ok, report.first_bad) == (False, EVENTS)
