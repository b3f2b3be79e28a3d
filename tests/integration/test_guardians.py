"""Minors only with their guardian (SPEC §4 "Minors", issue #17 item 5), with real aiortc
peers over real WebSockets against a real server.

A minor alone is held back (`joined.hold`, no media either way: counted in RTP packets at
the relay and in frames at the clients), is let in when their guardian joins (media flows),
is paused when the guardian leaves (media stops both ways), resumes when the guardian
returns within the grace, and ends `guardian-left` after it otherwise. A suspended guardian
lets nobody in; a visit with a minor is booked only with a guardian of theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from policy.rfc3339 import format_time
from relay import RelayPeer
from signaling import keys as K
from signaling.kiosk import ParlorClient
from tests.conftest import (
    Server,
    add_minor,
    make_config,
    make_visit,
    seed,
    start_server,
    stop_server,
)

LIGHT = {"size": (160, 120), "fps": 10}
GRACE = 4.0  # seconds: PARLOR_GUARDIAN_GRACE_SECONDS for these tests
QUIET = 1.0  # seconds a stopped flow is watched for a packet


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(make_config(tmp_path, guardian_grace_seconds=GRACE))
    try:
        await seed(srv)
        await add_minor(srv, "M1", "Mia", guardians=["C1"])
        yield srv
    finally:
        await stop_server(srv)


async def joins(
    server: Server, visit: dict[str, Any], who: str, clients: list[ParlorClient]
) -> ParlorClient:
    """`who` (a contact, or "device") joins with media; kept in `clients` to be closed."""
    client = server.client(visit["join"][who]["token"], visit["id"], **LIGHT)
    clients.append(client)
    joined = await client.connect()
    assert joined["type"] == "joined", joined
    return client


def peer_of(srv: Server, client: ParlorClient) -> RelayPeer:
    assert client.joined is not None
    return srv.app[K.SESSIONS].by_id[client.joined["session"]].peer


def flows(srv: Server, minor: RelayPeer) -> tuple[int, int]:
    """RTP packets the relay sent *to* the minor, and sent to anyone *from* the minor."""
    from_minor = sum(
        leg.sent.packets
        for session in srv.app[K.SESSIONS].by_id.values()
        for leg in session.peer.legs()
        if leg.publisher_id == minor.peer_id
    )
    return minor.counters.packets_forwarded, from_minor


async def stopped_both_ways(srv: Server, minor: RelayPeer, client: ParlorClient) -> None:
    """No packet either way, nor a decoded frame at the minor, for QUIET seconds (after the
    packets already on the wire have arrived)."""
    await asyncio.sleep(0.3)
    before, frames = flows(srv, minor), dict(client.received.frames)
    await asyncio.sleep(QUIET)
    assert flows(srv, minor) == before
    assert client.received.frames["video"] - frames.get("video", 0) <= 1  # one in the decoder


async def flowing_both_ways(srv: Server, minor: RelayPeer, timeout: float = 10.0) -> None:
    start = flows(srv, minor)
    deadline = time.monotonic() + timeout
    while True:
        now = flows(srv, minor)
        if now[0] > start[0] + 20 and now[1] > start[1] + 20:
            return
        assert time.monotonic() < deadline, f"media did not flow both ways: {start} -> {now}"
        await asyncio.sleep(0.05)


async def hold_state(client: ParlorClient, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        hold = client.last("hold")
        if hold is not None and hold["state"] == state:
            return hold
        assert time.monotonic() < deadline, f"no hold {state!r}: {hold}"
        await asyncio.sleep(0.02)


async def participant_state(client: ParlorClient, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        news = client.last("participant-state")
        if news is not None and news["participant"]["state"] == state:
            assert news["participant"]["minor"] is True
            return
        assert time.monotonic() < deadline, f"no participant-state {state!r}: {news}"
        await asyncio.sleep(0.02)


async def minor_actions(srv: Server) -> list[str]:
    status, events = await srv.api("GET", "/api/v1/audit?limit=1000")
    assert status == 200
    rows = events["events"] if isinstance(events, dict) else events
    return [e["action"] for e in rows if e["action"].startswith("minor.")]


async def test_a_minor_waits_for_their_guardian_pauses_without_and_ends_after_the_grace(server):
    visit = await make_visit(server, ["C1", "M1"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    minor = server.client(visit["join"]["M1"]["token"], visit["id"], **LIGHT)
    clients = [kiosk, minor]
    try:
        assert (await kiosk.connect())["type"] == "joined"
        joined = await minor.connect()
        # Alone: held back, told so first thing, and the kiosk hears of a waiting minor.
        assert joined["type"] == "joined", joined
        assert (
            joined["hold"]["state"] == "waiting" and joined["hold"]["reason"] == "guardian-absent"
        )
        assert joined["hold"]["guardians"] == ["Contact 1"]
        assert joined["hold"]["message"] == "Waiting for Contact 1 to join."
        arrived = await kiosk.wait_for("participant-joined")
        assert arrived["participant"]["minor"] is True
        assert arrived["participant"]["state"] == "waiting"
        peer = peer_of(server, minor)
        # The minor's media reaches the relay and goes no further; none reaches them.
        deadline = time.monotonic() + 15
        while peer.counters.packets_received < 50:
            assert time.monotonic() < deadline, "the minor's media never reached the relay"
            await asyncio.sleep(0.05)
        await stopped_both_ways(server, peer, minor)
        assert flows(server, peer) == (0, 0) and minor.received.frames["video"] == 0

        # The guardian joins: the minor is let in, media flows both ways.
        guardian = await joins(server, visit, "C1", clients)
        assert (await hold_state(minor, "active"))["reason"] is None
        await participant_state(kiosk, "active")
        await flowing_both_ways(server, peer)
        await minor.wait_frames("video", 5, timeout=15)

        # The guardian leaves: paused, no media either way, told how long is left.
        await guardian.leave()
        paused = await hold_state(minor, "paused")
        assert paused["reason"] == "guardian-left" and 0 < paused["ends_in"] <= GRACE
        assert "unless Contact 1 comes back" in paused["message"]
        await participant_state(kiosk, "paused")
        await stopped_both_ways(server, peer, minor)

        # Back within the grace: resumed, media flows again.
        back = await joins(server, visit, "C1", clients)
        await hold_state(minor, "active")
        await flowing_both_ways(server, peer)

        # Gone for longer than the grace: the minor's session ends `guardian-left` (4403);
        # the kiosk's goes on.
        await back.leave()
        await hold_state(minor, "paused")
        left_at = time.monotonic()
        await asyncio.wait_for(minor.closed.wait(), GRACE + 10)
        assert time.monotonic() - left_at >= GRACE - 0.5
        assert minor.close_code == 4403
        assert minor.terminated is not None and minor.terminated["reason"] == "guardian-left"
        assert not kiosk.closed.is_set()
        _, live = await server.api("GET", "/api/v1/sessions")
        assert {s["sub"] for s in live} == {"device:K1"}
        assert await minor_actions(server) == [
            "minor.held", "minor.admitted", "minor.paused", "minor.resumed", "minor.paused",
        ]  # fmt: skip
        status, sessions = await server.api("GET", "/api/v1/sessions?live=false")
        assert status == 200, sessions
        ended = [s for s in sessions if s["sub"] == "contact:M1" and s["visit"] == visit["id"]]
        assert [s["end_reason"] for s in ended] == ["guardian-left"], sessions
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_suspended_guardian_lets_no_minor_in(server):
    """Directives win: suspending the guardian ends their session and pauses the minor, and
    while it lasts the guardian cannot come back to let the minor in."""
    visit = await make_visit(server, ["C1", "M1"])
    guardian = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    minor = server.client(visit["join"]["M1"]["token"], visit["id"], **LIGHT)
    try:
        assert (await guardian.connect())["type"] == "joined"
        joined = await minor.connect()
        assert joined["hold"]["state"] == "active"
        peer = peer_of(server, minor)
        await minor.wait_frames("video", 3, timeout=15)

        body = {"scope": "contact:C1", "action": "suspend", "reason": "Threats",
                "legal_basis": "Rule 51", "expires_at": format_time(time.time() + 3600)}  # fmt: skip
        status, directive = await server.api("POST", "/api/v1/directives", body)
        assert status == 201 and directive["sessions_ended"] == 1, directive
        await hold_state(minor, "paused")
        await stopped_both_ways(server, peer, minor)
        again = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        refused = await again.connect()
        assert (refused["type"], refused["code"]) == ("error", "suspended")
        await again.close()
        assert minor.last("hold")["state"] == "paused"
    finally:
        await asyncio.gather(guardian.close(), minor.close())


async def test_a_change_of_guardians_reaches_the_live_call_before_the_answer(server):
    """Staff remove the guardian who is in the call: the minor is paused before the PUT
    answers; the other guardian, named now, joins and lets them in again."""
    status, answer = await server.api(
        "PUT", "/api/v1/contacts/M1/guardians", {"guardians": ["C1", "C2"]}
    )
    assert status == 200, answer
    visit = await make_visit(server, ["C1", "C2", "M1"])
    first = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    minor = server.client(visit["join"]["M1"]["token"], visit["id"], **LIGHT)
    clients = [first, minor]
    try:
        assert (await first.connect())["type"] == "joined"
        assert (await minor.connect())["hold"]["state"] == "active"
        peer = peer_of(server, minor)
        await flowing_both_ways(server, peer)

        status, answer = await server.api(
            "PUT", "/api/v1/contacts/M1/guardians", {"guardians": ["C2"]}
        )
        assert status == 200 and answer["guardians"] == ["C2"], answer
        assert peer.held  # before the answer: no media from here on
        paused = await hold_state(minor, "paused")
        assert paused["guardians"] == ["Contact 2"]
        await stopped_both_ways(server, peer, minor)

        await joins(server, visit, "C2", clients)
        await hold_state(minor, "active")
        await flowing_both_ways(server, peer)

        status, _ = await server.api(
            "PUT", "/api/v1/contacts/M1/guardians", {"guardians": ["C1", "C2"]}
        )
        assert status == 200
        deadline = time.monotonic() + 5
        while minor.last("hold")["guardians"] != ["Contact 1", "Contact 2"]:
            assert time.monotonic() < deadline, minor.last("hold")
            await asyncio.sleep(0.02)
        assert minor.last("hold")["state"] == "active" and not peer.held
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_change_of_guardians_during_a_minors_admission_is_not_missed(server):
    """The minor's admission has read their guardians (C1, in the call) when staff make C2
    their only guardian: the admission, registered after the PUT answered, holds them back
    for C2 instead of letting them in on C1."""
    status, _ = await server.api(
        "PUT", "/api/v1/contacts/M1/guardians", {"guardians": ["C1", "C2"]}
    )
    assert status == 200
    visit = await make_visit(server, ["C1", "C2", "M1"])
    store = server.app[K.POLICY].store
    read, release = asyncio.Event(), asyncio.Event()
    get_contact = store.get_contact

    async def slow_first_read_of_the_minor(contact_id: str) -> Any:
        found = await get_contact(contact_id)
        if contact_id == "M1" and not read.is_set():
            read.set()
            await release.wait()  # the admission's read is done, its registration not yet
        return found

    first = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    minor = server.client(visit["join"]["M1"]["token"], visit["id"], **LIGHT)
    clients = [first, minor]
    try:
        assert (await first.connect())["type"] == "joined"
        store.get_contact = slow_first_read_of_the_minor
        joining = asyncio.ensure_future(minor.connect())
        await asyncio.wait_for(read.wait(), 10)
        status, answer = await server.api(
            "PUT", "/api/v1/contacts/M1/guardians", {"guardians": ["C2"]}
        )
        assert status == 200 and answer["guardians"] == ["C2"], answer
        release.set()
        joined = await joining
        assert joined["type"] == "joined", joined
        assert joined["hold"]["state"] == "waiting", joined["hold"]
        assert joined["hold"]["guardians"] == ["Contact 2"], joined["hold"]
        peer = peer_of(server, minor)
        assert peer.held
        await stopped_both_ways(server, peer, minor)
    finally:
        store.get_contact = get_contact
        await asyncio.gather(*(c.close() for c in clients))


async def test_guardians_are_required_at_booking_and_at_the_door(server):
    """A visit with a minor and none of their guardians is refused `guardian-required`; a
    minor whose guardians on the visit were all withdrawn is refused at the join."""
    now = time.time()
    body = {"inmate": "I1", "device": "K1", "contacts": ["M1", "C2"], "kind": "social",
            "starts_at": format_time(now - 1), "ends_at": format_time(now + 3600)}  # fmt: skip
    status, answer = await server.api("POST", "/api/v1/visits", body)
    assert status == 422 and answer["error"]["code"] == "guardian-required", answer
    assert "Mia" in answer["error"]["message"]

    visit = await make_visit(server, ["C1", "M1"])
    status, answer = await server.api(
        "POST", "/api/v1/contacts/C1/approvals",
        {"inmate": "I1", "status": "denied", "reason": "Threats in a letter"},
    )  # fmt: skip
    assert status == 200, answer
    minor = server.client(visit["join"]["M1"]["token"], visit["id"], **LIGHT)
    try:
        refused = await minor.connect()
        assert (refused["type"], refused["code"]) == ("error", "guardian-required"), refused
        assert minor.close_code == 4403
    finally:
        await minor.close()


async def test_guardians_are_validated_audited_and_replayed(server):
    async def put(contact: str, guardians: Any) -> tuple[int, Any]:
        return await server.api(
            "PUT", f"/api/v1/contacts/{contact}/guardians", {"guardians": guardians}
        )

    def code(answer: Any) -> str:
        return answer["error"]["code"]

    status, answer = await put("M1", ["C1", "C2"])
    assert status == 200 and answer["guardians"] == ["C1", "C2"], answer
    refusals = {
        "nobody": (await put("X9", ["C1"]), 404, "unknown-contact"),
        "adult": (await put("C3", ["C1"]), 422, "not-a-minor"),
        "unknown": (await put("M1", ["X9"]), 422, "unknown-guardian"),
        "self": (await put("M1", ["M1"]), 422, "own-guardian"),
        "twice": (await put("M1", ["C1", "C1"]), 400, "duplicate-guardian"),
        "not a list": (await put("M1", "C1"), 400, "bad-field"),
        "same": (await put("M1", ["C2", "C1"]), 422, "unchanged"),
    }
    for name, ((status, answer), want_status, want_code) in refusals.items():
        assert (status, code(answer)) == (want_status, want_code), (name, answer)
    await add_minor(server, "M2", "Max", guardians=["C3"])
    status, answer = await put("M1", ["M2"])
    assert (status, code(answer)) == (422, "guardian-is-minor")
    status, answer = await server.api("PATCH", "/api/v1/contacts/C3", {"minor": True})
    assert (status, code(answer)) == (409, "is-guardian")
    status, answer = await server.api("PATCH", "/api/v1/contacts/M2", {"minor": False})
    assert (status, code(answer)) == (409, "has-guardians")
    status, answer = await put("M2", [])
    assert status == 200 and answer["guardians"] == []

    status, events = await server.api("GET", "/api/v1/audit?limit=1000")
    rows = events["events"] if isinstance(events, dict) else events
    sets = [e for e in rows if e["action"] == "contact.guardians-set"]
    assert [(e["subject"], e["data"]["guardians"], e["data"]["previous"]) for e in sets] == [
        ("contact:M1", ["C1"], []),
        ("contact:M1", ["C1", "C2"], ["C1"]),
        ("contact:M2", ["C3"], []),
        ("contact:M2", [], ["C3"]),
    ]
    status, verified = await server.api("GET", "/api/v1/audit/verify", token="auditor")
    assert status == 200 and verified["ok"], verified
    assert verified["state"]["unreplayed"] == {}
