"""The store's state is a projection of the audit chain (issue #15, item 3; SPEC §4).

The attack: with write access to the SQLite file, `UPDATE directives SET status = 'lifted'`.
Before: `parlor audit verify` exited 0, and after a restart the suspended contact joined.
Now: `audit verify` exits 1 naming the row (table, id, field, stored value, the value the
chain implies), `GET /api/v1/audit/verify` lists it, a restart refuses to start with a clear
message, and a start with `--accept-store-state` restores the chain's values in the rows —
recorded as `store.state-accepted` with the disagreements and who started the node — so the
contact is still refused. The same for an approval row, a visit row, and rows added or
deleted by hand.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from policy.replay import StateDisagrees
from signaling import keys as K
from tests.api.test_cli import parlor
from tests.conftest import (
    SECRET,
    make_config,
    make_visit,
    recordings_done,
    seed,
    start_server,
    stop_server,
)
from tests.hardening.wire import exchange, join
from tests.harness.ports import free_port
from tests.integration.test_directives import directive_body


async def _suspended_contact(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A server's database where contact C1 is suspended and has a visit: (visit, directive)."""
    server = await start_server(make_config(tmp_path))
    try:
        await seed(server)
        visit = await make_visit(server, ["C1"])
        status, directive = await server.api(
            "POST", "/api/v1/directives", directive_body("contact:C1")
        )
        assert status == 201, directive
        return visit, directive
    finally:
        await stop_server(server)


def _tamper(tmp_path: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(tmp_path / "parlor.db") as conn:
        conn.execute("PRAGMA foreign_keys=OFF")
        assert conn.execute(sql, params).rowcount == 1


def _verify(tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    done = parlor("audit", "verify", "--db", str(tmp_path / "parlor.db"), cwd=tmp_path)
    return done.returncode, json.loads(done.stdout), done.stderr


async def _refused_to_start(tmp_path: Path) -> str:
    with pytest.raises(StateDisagrees) as refused:
        await start_server(make_config(tmp_path))
    return refused.value.message


async def test_a_directive_lifted_in_the_database_is_caught_and_stays_enforced(tmp_path):
    visit, directive = await _suspended_contact(tmp_path)
    _tamper(tmp_path, "UPDATE directives SET status = 'lifted' WHERE id = ?", directive["id"])

    code, report, stderr = _verify(tmp_path)
    assert code == 1 and report["ok"] is False and report["chain_ok"] is True
    assert report["state"]["disagreements"] == [
        {"table": "directives", "id": directive["id"], "field": "status",
         "stored": "lifted", "implied": "active"},
    ]  # fmt: skip
    assert f"directives {directive['id']} status: stored 'lifted'" in stderr

    message = await _refused_to_start(tmp_path)
    for words in (f"directives {directive['id']} status", "parlor audit verify",
                  "--accept-store-state", "store.state-accepted"):  # fmt: skip
        assert words in message, (words, message)

    server = await start_server(make_config(tmp_path, accept_store_state=True))
    try:
        # the chain's truth is enforced: the suspended contact is refused
        messages, close = await exchange(server, [join(visit["join"]["C1"]["token"], visit["id"])])
        assert (messages[0]["code"], close) == ("suspended", 4403), messages
        status, stored = await server.api("GET", f"/api/v1/directives/{directive['id']}")
        assert stored["status"] == "active"
        events = await server.app[K.STORE].audit_events()
        (accepted,) = [e for e in events if e.action == "store.state-accepted"]
        assert accepted.data["disagreements"] == report["state"]["disagreements"]
        started_by = accepted.data["started_by"]
        assert started_by["node"] == server.app[K.CONFIG].node_id
        assert started_by["host"] == socket.gethostname() and started_by["pid"] > 0
        status, verified = await server.api("GET", "/api/v1/audit/verify", token="auditor")
        assert verified["ok"] is True and verified["state"]["disagreements"] == []
    finally:
        await stop_server(server)
    assert _verify(tmp_path)[0] == 0
    await stop_server(await start_server(make_config(tmp_path)))  # and starts normally again


async def test_the_api_lists_a_disagreement_while_the_node_runs(tmp_path):
    server = await start_server(make_config(tmp_path))
    try:
        await seed(server)
        visit = await make_visit(server, ["C1"])
        _tamper(
            tmp_path, "UPDATE visits SET contacts = ? WHERE id = ?", '["C1", "C2"]', visit["id"]
        )
        status, report = await server.api("GET", "/api/v1/audit/verify", token="auditor")
        assert status == 200 and report["ok"] is False and report["chain_ok"] is True
        assert report["state"]["disagreements"] == [
            {"table": "visits", "id": visit["id"], "field": "contacts",
             "stored": ["C1", "C2"], "implied": ["C1"]},
        ]  # fmt: skip
    finally:
        await stop_server(server)


async def test_an_approval_and_a_visit_changed_in_the_database_are_restored(tmp_path):
    server = await start_server(make_config(tmp_path))
    try:
        await seed(server)
        visit = await make_visit(server, ["C2"])
        status, _ = await server.api(
            "POST", "/api/v1/contacts/C1/approvals",
            {"inmate": "I1", "status": "denied", "reason": "Failed the background check"},
        )  # fmt: skip
        assert status == 200
    finally:
        await stop_server(server)
    # a denied contact approved again, and a visit made a day longer, without the API
    _tamper(
        tmp_path, "UPDATE approvals SET status = 'approved' WHERE contact = 'C1' AND inmate = 'I1'"
    )
    _tamper(tmp_path, "UPDATE visits SET ends_at = ends_at + 86400 WHERE id = ?", visit["id"])

    code, report, _ = _verify(tmp_path)
    wrong = {(d["table"], d["id"], d["field"]): (d["stored"], d["implied"])
             for d in report["state"]["disagreements"]}  # fmt: skip
    assert code == 1 and set(wrong) == {
        ("approvals", "C1:I1", "status"),
        ("visits", visit["id"], "ends_at"),
    }
    assert wrong[("approvals", "C1:I1", "status")] == ("approved", "denied")
    assert wrong[("visits", visit["id"], "ends_at")][1] == visit["ends_at"]
    message = await _refused_to_start(tmp_path)
    assert "approvals C1:I1 status" in message and f"visits {visit['id']} ends_at" in message

    server = await start_server(make_config(tmp_path, accept_store_state=True))
    try:
        contact = await server.app[K.STORE].get_contact("C1")
        assert contact is not None and contact.approvals["I1"] == "denied"
        status, restored = await server.api("GET", f"/api/v1/visits/{visit['id']}")
        assert restored["ends_at"] == visit["ends_at"]
    finally:
        await stop_server(server)


async def test_rows_added_or_deleted_by_hand_are_named_and_restored(tmp_path):
    visit, directive = await _suspended_contact(tmp_path)
    _tamper(tmp_path, "DELETE FROM directives WHERE id = ?", directive["id"])
    _tamper(
        tmp_path,
        "INSERT INTO visits (id, facility, inmate, device, contacts, starts_at, ends_at, kind,"
        " created_by, created_at) SELECT 'V-forged', facility, inmate, device, contacts,"
        " starts_at, ends_at, kind, created_by, created_at FROM visits WHERE id = ?",
        visit["id"],
    )
    code, report, _ = _verify(tmp_path)
    assert code == 1
    assert sorted((d["table"], d["id"], d["field"], d["stored"], d["implied"])
                  for d in report["state"]["disagreements"]) == [
        ("directives", directive["id"], "row", "absent", "present"),
        ("visits", "V-forged", "row", "present", "absent"),
    ]  # fmt: skip
    server = await start_server(make_config(tmp_path, accept_store_state=True))
    try:
        store = server.app[K.STORE]
        assert (await store.get_directive(directive["id"])).status == "active"
        assert await store.get_visit("V-forged") is None
        messages, close = await exchange(server, [join(visit["join"]["C1"]["token"], visit["id"])])
        assert (messages[0]["code"], close) == ("suspended", 4403), messages
    finally:
        await stop_server(server)


async def test_parlor_serve_refuses_to_start_with_a_clear_message(tmp_path):
    _, directive = await _suspended_contact(tmp_path)
    _tamper(tmp_path, "UPDATE directives SET status = 'lifted' WHERE id = ?", directive["id"])
    done = parlor(
        "serve", "--db", str(tmp_path / "parlor.db"), "--port", str(free_port()),
        cwd=tmp_path, timeout=60, PARLOR_SECRET=SECRET.decode(),
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    assert f"directives {directive['id']} status: stored 'lifted'" in done.stderr
    assert "--accept-store-state" in done.stderr


async def test_recording_turned_off_or_a_recording_edited_in_the_database_is_caught(tmp_path):
    """The switch that decides whether calls are recorded, and a recording's digest, are
    projections of the chain too: edited by hand, `audit verify` names them, and a start with
    `--accept-store-state` puts the chain's values back."""
    server = await start_server(make_config(tmp_path))
    try:
        await seed(server)
        status, _ = await server.api(
            "PATCH", "/api/v1/facilities/F1", {"recording_retention_days": 30}, token="supervisor"
        )
        assert status == 200
        visit = await make_visit(server, ["C1"])
        kiosk = server.client(
            visit["join"]["device"]["token"], visit["id"], size=(160, 120), fps=10
        )
        try:
            assert (await kiosk.connect())["recorded"] is True
            await asyncio.sleep(1.0)
        finally:
            await kiosk.leave()
        [recording] = await recordings_done(server, visit["id"])
        assert recording["status"] == "finalized", recording
    finally:
        await stop_server(server)
    _tamper(
        tmp_path,
        "UPDATE facilities SET recording = 0, recording_retention_days = 1 WHERE id = 'F1'",
    )
    _tamper(tmp_path, "UPDATE recordings SET sha256 = ? WHERE id = ?", "0" * 64, recording["id"])

    code, report, _ = _verify(tmp_path)
    assert code == 1
    assert sorted((d["table"], d["field"], d["implied"]) for d in report["state"]["disagreements"]) == [
        ("facilities", "recording", True), ("facilities", "recording_retention_days", 30),
        ("recordings", "sha256", recording["sha256"]),
    ]  # fmt: skip
    restarted = await start_server(make_config(tmp_path, accept_store_state=True))
    try:
        status, facilities = await restarted.api("GET", "/api/v1/facilities")
        f1 = next(f for f in facilities if f["id"] == "F1")
        assert (f1["recording"], f1["recording_retention_days"]) == (True, 30)
        status, again = await restarted.api(
            "GET", f"/api/v1/recordings/{recording['id']}", token="auditor"
        )
        assert again["sha256"] == recording["sha256"]
    finally:
        await stop_server(restarted)
