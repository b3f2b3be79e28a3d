"""Appeals are bounded (issue #15, item 7): one open appeal per person per directive, a text
cap, and the rule holds for concurrent filings because the database enforces it.

Before: 25 appeals of 4 KB from one person against one directive were all accepted (201).
Now: the first is 201, every other one while it is open is 409 `appeal-open` naming it, a
text over 2,000 characters is 400 `too-long`, and once the first is decided a new one may be
filed (SPEC §4 counts *open* appeals).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from policy.audit import verify_chain
from policy.store import SqliteStore
from signaling import keys as K
from tests.cluster.conftest import directive_body
from tests.conftest import make_visit, seed

ATTEMPTS = 25


async def _affected(server, contacts: list[str]):
    """A directive that matched the contacts' visit, and each contact's family token."""
    await seed(server)
    visit = await make_visit(server, contacts)
    status, directive = await server.api(
        "POST", "/api/v1/directives", directive_body("inmate:I1", action="end")
    )
    assert status == 201, directive
    return directive, {c: visit["join"][c]["token"] for c in contacts}


async def _appeal(server, directive_id: str, token: str, text: str):
    return await server.api(
        "POST", f"/api/v1/directives/{directive_id}/appeals", {"text": text}, token=token
    )


async def test_one_open_appeal_per_person_and_a_text_cap(open_server):
    directive, tokens = await _affected(open_server, ["C1", "C2"])
    text = "I did not say that. " * 75  # 1,500 characters
    answers = [
        await _appeal(open_server, directive["id"], tokens["C1"], text) for _ in range(ATTEMPTS)
    ]
    assert [status for status, _ in answers] == [201] + [409] * (ATTEMPTS - 1)
    first = answers[0][1]
    for _, refused in answers[1:]:
        assert refused["error"]["code"] == "appeal-open"
        assert first["id"] in refused["error"]["message"]
    # another person affected by the same directive has an open appeal of their own
    status, other = await _appeal(open_server, directive["id"], tokens["C2"], "Please review.")
    assert status == 201, other

    status, too_long = await _appeal(open_server, directive["id"], tokens["C2"], "x" * 2001)
    assert (status, too_long["error"]["code"]) == (400, "too-long")
    assert "2000 characters" in too_long["error"]["message"]

    status, queue = await open_server.api("GET", "/api/v1/appeals?status=open")
    assert sorted(a["filed_by"] for a in queue) == ["contact:C1", "contact:C2"]

    # Decided: the person may appeal again.
    status, _ = await open_server.api(
        "POST", f"/api/v1/appeals/{first['id']}/decide", {"decision": "uphold", "note": "Reviewed"},
        token=open_server.token("operator:bob", "operator"),
    )  # fmt: skip
    assert status == 200
    status, again = await _appeal(open_server, directive["id"], tokens["C1"], "New facts.")
    assert status == 201 and again["id"] != first["id"], again


async def test_concurrent_appeals_of_one_person_cannot_both_pass(open_server):
    directive, tokens = await _affected(open_server, ["C1"])
    answers = await asyncio.gather(
        *(_appeal(open_server, directive["id"], tokens["C1"], f"try {i}") for i in range(ATTEMPTS))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [409] * (ATTEMPTS - 1), statuses
    assert {body["error"]["code"] for status, body in answers if status == 409} == {"appeal-open"}
    appeals = await open_server.app[K.STORE].list_appeals(directive=directive["id"])
    assert [a.status for a in appeals] == ["open"]


async def test_an_older_database_with_duplicate_open_appeals_is_brought_under_the_rule(
    tmp_path: Path,
):
    """A database written before the rule may hold 25 open appeals of one person: on open,
    the first filed stays open, the others are closed as `superseded` with an audit event,
    and the unique index is in place."""
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:  # the shape of the old schema: no index, duplicates
        conn.execute("DROP INDEX appeals_one_open")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.executemany(
            "INSERT INTO appeals (id, directive, filed_by, text, filed_at, status)"
            " VALUES (?, 'D1', 'contact:C1', 'again', ?, 'open')",
            [(f"A{i:02}", 1000.0 + i) for i in range(ATTEMPTS)],
        )
    store = SqliteStore(path)
    await store.open()
    try:
        appeals = await store.list_appeals(directive="D1")
        assert [(a.id, a.status) for a in appeals if a.status == "open"] == [("A00", "open")]
        assert {a.status for a in appeals[1:]} == {"superseded"}
        (event,) = [e for e in await store.audit_events() if e.action == "appeal.superseded"]
        assert event.data["appeals"] == [f"A{i:02}" for i in range(1, ATTEMPTS)]
        assert verify_chain(*await store.audit_chain()).ok
    finally:
        await store.close()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO appeals (id, directive, filed_by, text, filed_at, status)"
            " VALUES ('A99', 'D1', 'contact:C1', 'again', 2000, 'open')"
        )
