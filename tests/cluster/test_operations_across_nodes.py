"""Running visitation on two nodes (issue #15 item 1, issue #16): an approval denied on one
node ends the contact's call relayed by the other and refuses them there; a visit cancelled
on one node ends its call on the other; a kiosk's presence held by one node is seen from
the other, and goes offline there when the kiosk goes, or when its node does.

Nodes A and B share one PostgreSQL database; participants are real aiortc peers.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from policy.rfc3339 import format_time
from signaling import keys as K
from signaling.kiosk import PresenceLink
from tests.cluster.conftest import client, close_all, in_call, start_node, wait_for
from tests.conftest import add_minor, make_visit, seed, stop_server

pytestmark = pytest.mark.cluster


async def test_an_approval_denied_on_b_ends_the_contacts_call_on_a_and_refuses_them_there(
    cluster,
):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1", "C2"])  # C2 stays approved: the visit stands
    alone = await make_visit(a, ["C1"], device="K3", inmate="I1", starts_in=-1, length=3000)
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    lone_kiosk = client(a, alone, "device")
    assert (await lone_kiosk.connect(offer=False))["type"] == "joined"
    try:
        started = time.monotonic()
        status, answer = await b.api(
            "POST", "/api/v1/contacts/C1/approvals",
            {"inmate": "I1", "status": "denied", "reason": "Threats in a letter"},
        )  # fmt: skip
        assert status == 200, answer
        # B ended nothing itself (the call is on A) and cancelled the visit left without one.
        assert answer["sessions_ended"] == 0 and answer["visits_cancelled"] == [alone["id"]]
        ended_at = await wait_for(lambda: c1.closed.is_set(), timeout=5)
        print(f"cross-node withdrawal: {1000 * (ended_at - started):.1f} ms from POST on B")
        assert c1.close_code == 4403
        assert c1.terminated is not None and c1.terminated["reason"] == "approval-withdrawn"
        assert not kiosk.closed.is_set()
        # The cancellation reached A too: the lone visit's kiosk is ended, told, 4410.
        await wait_for(lambda: lone_kiosk.closed.is_set(), timeout=5)
        assert lone_kiosk.close_code == 4410
        # A learned it: C1's link is refused there, and so is a refresh.
        again = client(a, visit, "C1")
        refused = await again.connect()
        await again.close()
        assert (refused["code"], again.close_code) == ("not-approved", 4403)
        status, body = await a.api(
            "POST", "/api/v1/tokens/refresh", {}, token=visit["join"]["C1"]["token"]
        )
        assert (status, body["error"]["code"]) == (409, "not-approved")
        # The record: A ended the session, for the reason SPEC §2 names.
        _, sessions = await b.api("GET", "/api/v1/sessions?live=false")
        record = next(s for s in sessions if s["id"] == c1.joined["session"])
        assert (record["end_reason"], record["node"]) == ("approval-withdrawn", "A")
    finally:
        await close_all([kiosk, c1, lone_kiosk])


async def test_a_guardian_removed_on_b_pauses_their_minor_on_a(cluster):
    """Minors (SPEC §4): the call is on A; staff on B take the guardian in the call off the
    minor's guardians, and A pauses the minor (no media either way) when the bus delivers it.
    A guardian suspended on B ends on A and pauses the minor the same way."""
    a, b = cluster
    await seed(a)
    await add_minor(a, "M1", "Mia", guardians=["C1", "C2"])
    visit = await make_visit(a, ["C1", "C2", "M1"])
    c1, minor = await in_call(a, visit, "C1", "M1")
    c2: list = []
    try:
        assert minor.joined is not None and minor.joined["hold"]["state"] == "active"
        peer = a.app[K.SESSIONS].by_id[minor.joined["session"]].peer
        status, answer = await b.api("PUT", "/api/v1/contacts/M1/guardians", {"guardians": ["C2"]})
        assert status == 200, answer
        await wait_for(lambda: peer.held, timeout=5)
        await wait_for(lambda: (minor.last("hold") or {}).get("state") == "paused", timeout=5)

        c2 = await in_call(a, visit, "C2")
        await wait_for(lambda: not peer.held, timeout=5)
        body = {"scope": "contact:C2", "action": "suspend", "reason": "Threats",
                "legal_basis": "Rule 51", "expires_at": format_time(time.time() + 3600)}  # fmt: skip
        status, directive = await b.api("POST", "/api/v1/directives", body)
        assert status == 201, directive
        await wait_for(lambda: c2[0].closed.is_set() and peer.held, timeout=5)
        assert c2[0].close_code == 4403
    finally:
        await close_all([c1, minor, *c2])


async def test_a_visit_cancelled_on_b_ends_its_call_on_a(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1"])
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        status, answer = await b.api(
            "POST", f"/api/v1/visits/{visit['id']}/cancel",
            {"reason": "lockdown", "note": "Search of the wing"},
        )  # fmt: skip
        assert status == 200 and answer["status"] == "cancelled", answer
        await wait_for(lambda: c1.closed.is_set() and kiosk.closed.is_set(), timeout=5)
        assert (c1.close_code, kiosk.close_code) == (4410, 4410)
        assert c1.terminated is not None and "lockdown" in c1.terminated["message"]
        again = client(a, visit, "C1")
        refused = await again.connect()
        await again.close()
        assert (refused["code"], again.close_code) == ("visit-cancelled", 4410)
    finally:
        await close_all([kiosk, c1])


async def test_a_kiosk_held_by_a_is_seen_online_from_b_and_offline_when_it_or_a_goes(
    tmp_path, pg_url
):
    a = await start_node(tmp_path, pg_url, "A", kiosk_heartbeat_seconds=1.0)
    b = await start_node(tmp_path, pg_url, "B", kiosk_heartbeat_seconds=1.0)
    links = []
    try:
        await seed(a)

        async def state(device: str) -> tuple[str | None, str | None]:
            _, devices = await b.api("GET", "/api/v1/devices", token="auditor")
            presence = next(d for d in devices if d["id"] == device)["presence"]
            return (presence["state"], presence["node"]) if presence else (None, None)

        async def until(device: str, wanted: tuple[str, str], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while await state(device) != wanted:
                assert time.monotonic() < deadline, (device, await state(device))
                await asyncio.sleep(0.1)

        k1 = PresenceLink(a.url, a.token("device:K1", "kiosk"), reconnect=False)
        k3 = PresenceLink(a.url, a.token("device:K3", "kiosk"), reconnect=False)
        links += [k1, k3]
        assert await k1.start() is not None and await k3.start() is not None
        await until("K1", ("online", "A"), 5)
        await k1.stop()  # the kiosk goes: offline after one beat
        await until("K1", ("offline", "A"), 5)
        # K3 moves to B before A notices it went: B's row stands, A's late offline is a no-op.
        k3b = PresenceLink(b.url, b.token("device:K3", "kiosk"), reconnect=False)
        links.append(k3b)
        await k3.stop()
        assert await k3b.start() is not None
        await until("K3", ("online", "B"), 5)
        await asyncio.sleep(2.0)  # longer than A's grace
        assert await state("K3") == ("online", "B")
        # Now K2 on A, and A leaves the cluster (its bus stops: no more heartbeats, and its
        # row in `nodes` goes): B's sweep marks the kiosks A held offline.
        k2 = PresenceLink(a.url, a.token("device:K2", "kiosk"), reconnect=False)
        links.append(k2)
        assert await k2.start() is not None
        await until("K2", ("online", "A"), 5)
        await a.app[K.BUS].stop()
        await until("K2", ("offline", "A"), 15)
        _, events = await b.api("GET", "/api/v1/audit?limit=5000", token="auditor")
        why = [e["data"]["why"] for e in events
               if e["action"] == "device.offline" and e["subject"] == "device:K2"]  # fmt: skip
        assert why == ["node-lost"]
    finally:
        for link in links:
            await link.stop()
        await stop_server(b)
        await stop_server(a)


async def test_two_nodes_booking_one_kiosk_slot_at_once_cannot_both_win(cluster):
    """The double-booking check runs inside the write's transaction (the kiosk's row locked,
    then the overlap read in a fresh snapshot): on PostgreSQL too, with writers on two nodes."""
    a, b = cluster
    await seed(a)
    start = time.time() + 7200
    times = {"starts_at": format_time(start), "ends_at": format_time(start + 1800)}
    bodies = [
        {"inmate": "I1", "device": "K1", "contacts": [f"C{n}"], "kind": "social", **times}
        for n in (1, 2, 3, 4)
    ]
    answers = await asyncio.gather(
        *(
            node.api("POST", "/api/v1/visits", body)
            for node, body in zip((a, b, a, b), bodies, strict=True)
        )
    )
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409], answers
    assert {a["error"]["code"] for s, a in answers if s == 409} == {"double-booked"}
