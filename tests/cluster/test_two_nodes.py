"""Two nodes on one PostgreSQL database (SPEC §8): any node accepts operator commands and they
take effect cluster-wide; each visit lives on one node.

Nodes A and B run in this process on their own ports; participants are real aiortc peers.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from policy.service import Rules
from policy.store.postgres import PostgresStore
from signaling import keys as K
from signaling.bus import STALE_AFTER, ws_url
from signaling.protocol import Close
from tests.cluster.conftest import (
    client,
    close_all,
    counted,
    directive_body,
    ended_record,
    in_call,
    start_node,
    wait_for,
)
from tests.conftest import make_visit, seed, stop_server, use_up_unconfirmed_time

pytestmark = pytest.mark.cluster


async def test_a_directive_issued_on_b_ends_the_call_relayed_by_a(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1", "C2"])
    kiosk, c1, c2 = await in_call(a, visit, "device", "C1", "C2")
    try:
        started = time.monotonic()
        status, directive = await b.api("POST", "/api/v1/directives", directive_body("contact:C1"))
        assert status == 201, directive
        ended_at = await wait_for(lambda: c1.closed.is_set(), timeout=5)
        print(f"cross-node kill: {1000 * (ended_at - started):.1f} ms from POST on B")

        assert c1.close_code == 4403
        assert c1.terminated is not None and c1.terminated["directive"]["id"] == directive["id"]
        assert c1.terminated["directive"]["legal_basis"] == "Rule 51(4) Prison Rules"
        # Only C1 is cut; the rest of the visit goes on (SPEC §4).
        assert not kiosk.closed.is_set() and not c2.closed.is_set()
        before = kiosk.received.frames["video"]
        await wait_for(lambda: kiosk.received.frames["video"] >= before + 5, timeout=5)

        record = await ended_record(a, c1.joined["session"])
        assert record.end_reason == f"directive:{directive['id']}" and record.node == "A"
        # B ended nothing itself; A counts the session it ended, and says so in the audit log
        assert directive["sessions_ended"] == 0

        await counted(b, directive["id"], 1)
        enforced = [
            e for e in await a.app[K.STORE].audit_events() if e.action == "directive.enforced"
        ]
        assert [(e.actor, e.data) for e in enforced] == [
            ("system:parlor", {"sessions": [c1.joined["session"]], "node": "A"})
        ]
        # A learned it: C1's token cannot rejoin on A.
        again = client(a, visit, "C1")
        refused = await again.connect()
        await again.close()
        assert (
            refused["type"] == "error"
            and refused["code"] == "suspended"
            and again.close_code == 4403
        )
    finally:
        await close_all([kiosk, c1, c2])


async def test_a_directive_ends_calls_on_both_nodes_and_each_counts_its_own(cluster):
    """The issuing node enforces its own directive (its answer counts the sessions it ended:
    the bus, which hears the same commit, leaves that to it); the other node counts its own."""
    a, b = cluster
    await seed(a)
    on_a = await make_visit(a, ["C1"])
    on_b = await make_visit(a, ["C2"], device="K3")
    calls = [*await in_call(a, on_a, "device", "C1"), *await in_call(b, on_b, "device", "C2")]
    try:
        status, directive = await b.api("POST", "/api/v1/directives", directive_body("inmate:I1"))
        # B's own two, plus A's if A's count landed first (the answer reads the stored count)
        assert status == 201 and directive["sessions_ended"] in (2, 4)
        for c in calls:
            await wait_for(lambda c=c: c.closed.is_set(), timeout=5)
            assert c.close_code == 4403 and c.terminated["directive"]["id"] == directive["id"]
        await counted(b, directive["id"], 4)
        enforced = [
            e for e in await b.app[K.STORE].audit_events() if e.action == "directive.enforced"
        ]
        counts = sorted(
            (e.actor.split(":")[0], e.data.get("node"), len(e.data["sessions"])) for e in enforced
        )
        assert counts == [("operator", None, 2), ("system", "A", 2)]  # B's API handler, A's bus
    finally:
        await close_all(calls)


async def test_a_lift_on_b_readmits_on_a(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1"])
    status, directive = await b.api("POST", "/api/v1/directives", directive_body("contact:C1"))
    assert status == 201
    await wait_for(lambda: directive["id"] in a.app[K.POLICY].index.by_id, timeout=5)
    status, _ = await b.api(
        "POST", f"/api/v1/directives/{directive['id']}/lift", {"reason": "appeal granted"}
    )
    assert status == 200
    await wait_for(lambda: directive["id"] not in a.app[K.POLICY].index.by_id, timeout=5)
    c1 = client(a, visit, "C1")
    try:
        joined = await c1.connect(offer=False)
        assert joined["type"] == "joined", joined
    finally:
        await c1.close()


async def test_audio_only_on_b_restricts_the_call_on_a(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1"])
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        status, directive = await b.api(
            "POST", "/api/v1/directives", directive_body("contact:C1", "audio-only")
        )
        assert status == 201
        restricted = await c1.wait_for("restricted", timeout=5)
        assert (
            restricted["action"] == "audio-only"
            and restricted["directive"]["id"] == directive["id"]
        )
        assert not c1.closed.is_set()
    finally:
        await close_all([kiosk, c1])


async def test_a_request_confirmed_on_b_cuts_the_call_on_a(tmp_path, pg_url):
    """A broad directive past its scope's unconfirmed time waits, pending, for a second
    supervisor: it stops nothing on any node until it is confirmed, and then the node holding
    the call ends it as it would a fresh directive's."""
    rules = replace(Rules(), confirm_window_seconds=2.0, await_confirmation_seconds=120.0)
    a = await start_node(tmp_path, pg_url, "A", rules=rules)
    b = await start_node(tmp_path, pg_url, "B", rules=rules)
    calls = []
    try:
        await seed(a)
        await use_up_unconfirmed_time(a, "facility:F1")
        visit = await make_visit(a, ["C1"])
        calls = await in_call(a, visit, "device", "C1")
        sue = b.token("operator:sue", "supervisor")
        body = directive_body("facility:F1", await_confirmation=True)
        status, request = await b.api("POST", "/api/v1/directives", body, token=sue)
        assert status == 201 and request["status"] == "pending", request
        await wait_for(lambda: request["id"] in a.app[K.POLICY].index.pending, timeout=5)
        for c in calls:  # A knows of it, and it stops nothing there
            before = c.received.frames["video"]
            await wait_for(lambda c=c, n=before: c.received.frames["video"] >= n + 5, timeout=5)
            assert not c.closed.is_set()

        status, confirmed = await b.api(
            "POST", f"/api/v1/directives/{request['id']}/confirm", {},
            token=b.token("operator:sam", "supervisor"),
        )  # fmt: skip
        assert status == 200 and confirmed["status"] == "active", confirmed
        assert confirmed["sessions_ended"] == 0  # B holds none of the call
        for c in calls:
            await wait_for(lambda c=c: c.closed.is_set(), timeout=5)
            assert c.close_code == 4403 and c.terminated["directive"]["id"] == request["id"]
            record = await ended_record(a, c.joined["session"])
            assert record.end_reason == f"directive:{request['id']}" and record.node == "A"
        await counted(b, request["id"], 2)
        status, verified = await b.api("GET", "/api/v1/audit/verify")
        assert status == 200 and verified["ok"] and verified["state"]["ok"], verified
    finally:
        await close_all(calls)
        await stop_server(b)
        await stop_server(a)


async def test_sessions_on_a_are_listed_and_ended_from_b(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1"])
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        status, sessions = await b.api("GET", "/api/v1/sessions", token="auditor")
        assert status == 200
        assert {(s["id"], s["node"]) for s in sessions} == {
            (kiosk.joined["session"], "A"),
            (c1.joined["session"], "A"),
        }

        status, answer = await b.api("POST", f"/api/v1/sessions/{c1.joined['session']}/end", {},
                                     token=b.token("operator:bob", "operator"))  # fmt: skip
        assert status == 202, answer
        assert answer["end_requested"] is True and answer["node"] == "A"
        await wait_for(lambda: c1.closed.is_set(), timeout=5)
        assert c1.close_code == 4403
        assert c1.terminated is not None and c1.terminated["reason"] == "operator:bob"
        assert not kiosk.closed.is_set()
        record = await ended_record(a, c1.joined["session"])
        assert record.end_reason == "operator:bob"
        status, sessions = await b.api("GET", "/api/v1/sessions", token="auditor")
        assert [s["id"] for s in sessions] == [kiosk.joined["session"]]
        # Ending it again is an unknown live session, on either node.
        status, _ = await b.api("POST", f"/api/v1/sessions/{c1.joined['session']}/end", {})
        assert status == 404
        events = [
            e for e in await b.app[K.STORE].audit_events() if e.action == "session.end-requested"
        ]
        assert [e.data for e in events] == [
            {"session": c1.joined["session"], "by": "operator:bob", "node": "A"}
        ]
    finally:
        await close_all([kiosk, c1])


async def test_a_participant_reaching_b_for_a_visit_on_a_is_redirected(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1", "C2"])
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        c2 = client(b, visit, "C2")
        first = await c2.connect()
        await c2.close()
        assert first == {**first, "type": "redirect", "url": ws_url(a.url)}
        assert c2.close_code == Close.REDIRECT == 4307
        assert not b.app[K.SESSIONS].calls  # B holds nothing for this visit

        # Following the redirect joins the call on A, with the others.
        c2 = client(a, visit, "C2")
        joined = await c2.connect()
        assert joined["type"] == "joined"
        assert {p["role"] for p in joined["participants"]} == {"kiosk", "family"}
        await close_all([c2])
    finally:
        await close_all([kiosk, c1])


async def test_a_visit_placed_on_a_stopped_node_moves(tmp_path, pg_url):
    a = await start_node(tmp_path, pg_url, "A")
    b = await start_node(tmp_path, pg_url, "B")
    try:
        await seed(a)
        visit = await make_visit(a, ["C1"])
        kiosk = client(a, visit, "device")
        assert (await kiosk.connect(offer=False))["type"] == "joined"
        await kiosk.close()
        await stop_server(a)  # a clean stop leaves the cluster: its placements are released
        kiosk = client(b, visit, "device")
        assert (await kiosk.connect(offer=False))["type"] == "joined"
        await kiosk.close()
    finally:
        await stop_server(b)


async def test_a_silent_nodes_placement_is_taken_over(pg_url):
    """Placement is decided in the database's clock: a node silent for STALE_AFTER loses it."""
    store = PostgresStore(pg_url)
    await store.open()

    def gone(_seq: int, _event: object, _own: bool) -> None:
        return None

    listener = await store.listen(gone, lambda: None)
    try:
        await listener.heartbeat("A", "ws://a/ws")
        await listener.heartbeat("B", "ws://b/ws")
        first = await store.place("V1", "A", "ws://a/ws", STALE_AFTER)
        assert (first.node, first.url) == ("A", "ws://a/ws")
        assert (await store.place("V1", "B", "ws://b/ws", STALE_AFTER)).node == "A"  # A is alive
        await store._fetch(
            "UPDATE nodes SET last_seen = last_seen - ? WHERE id = ?", (STALE_AFTER + 1, "A")
        )
        taken = await store.place("V1", "B", "ws://b/ws", STALE_AFTER)
        assert (taken.node, taken.url) == ("B", "ws://b/ws")
        assert (await store.place("V1", "A", "ws://a/ws", STALE_AFTER)).node == "B"
    finally:
        listener.close()
        await store.close()
