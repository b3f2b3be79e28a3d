"""Directives against live calls of real aiortc peers (SPEC §4).

Two visits run side by side: visit A at kiosk K1 (facility F1, inmate I1) with contacts C1
and C2, and visit B at kiosk K2 (facility F2, inmate I2) with contact D1. Each test issues
one directive and checks that exactly the matching sessions end (4403, full payload) or are
restricted, and that every other session keeps receiving media.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any

import pytest

from policy.rfc3339 import format_time
from signaling import keys as K
from tests.conftest import make_visit, seed, use_up_unconfirmed_time

LIGHT = {"size": (160, 120), "fps": 10}


def directive_body(
    scope: str, action: str = "suspend", seconds: float = 3600, **extra: Any
) -> dict[str, Any]:
    return {
        "scope": scope, "action": action, "reason": "Contraband passed on camera",
        "legal_basis": "Rule 51(4) Prison Rules", "expires_at": format_time(time.time() + seconds), **extra,
    }  # fmt: skip


@asynccontextmanager
async def two_visits(server, *, seeded: bool = False):
    if not seeded:
        await seed(server)
    a = await make_visit(server, ["C1", "C2"])
    b = await make_visit(server, ["D1"], inmate="I2", device="K2")
    clients = {
        "A.kiosk": server.client(a["join"]["device"]["token"], a["id"], **LIGHT),
        "A.C1": server.client(a["join"]["C1"]["token"], a["id"], **LIGHT),
        "A.C2": server.client(a["join"]["C2"]["token"], a["id"], **LIGHT),
        "B.kiosk": server.client(b["join"]["device"]["token"], b["id"], **LIGHT),
        "B.D1": server.client(b["join"]["D1"]["token"], b["id"], **LIGHT),
    }
    try:
        for client in clients.values():
            joined = await client.connect()
            assert joined["type"] == "joined", joined
        for client in clients.values():
            await client.wait_frames("video", 5, timeout=15)
        yield a, b, clients
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))


async def frames_flow(client, kind: str = "video", count: int = 5, timeout: float = 5.0) -> bool:
    start = client.received.frames[kind]
    deadline = time.monotonic() + timeout
    while client.received.frames[kind] < start + count:
        if time.monotonic() > deadline or client.closed.is_set():
            return False
        await asyncio.sleep(0.02)
    return True


MATCHES = {
    "contact:C1": {"A.C1"},
    "pair:I1:C1": {"A.C1"},
    "visit:{A}": {"A.kiosk", "A.C1", "A.C2"},
    "device:K1": {"A.kiosk", "A.C1", "A.C2"},
    "inmate:I1": {"A.kiosk", "A.C1", "A.C2"},
    "facility:F1": {"A.kiosk", "A.C1", "A.C2"},
    "system": {"A.kiosk", "A.C1", "A.C2", "B.kiosk", "B.D1"},
}


@pytest.mark.parametrize("scope", list(MATCHES))
@pytest.mark.parametrize("action", ["suspend", "end"])
async def test_directive_ends_exactly_the_matching_sessions(server, scope, action):
    async with two_visits(server) as (a, b, clients):
        concrete = scope.format(A=a["id"])
        status, directive = await server.api(
            "POST", "/api/v1/directives", directive_body(concrete, action)
        )
        assert status == 201, directive
        expected = MATCHES[scope]
        assert directive["sessions_ended"] == len(expected)
        assert directive["status"] == "active"
        for name in expected:
            client = clients[name]
            await asyncio.wait_for(client.closed.wait(), 5)
            assert client.close_code == 4403, name
            terminated = client.terminated
            assert terminated is not None and terminated["reason"] == f"directive:{directive['id']}"
            notice = terminated["directive"]
            assert notice["id"] == directive["id"] and notice["action"] == action
            assert notice["reason"] == "Contraband passed on camera"
            assert notice["legal_basis"] == "Rule 51(4) Prison Rules"
            assert notice["expires_at"] == directive["expires_at"]
            url, _, fragment = notice["appeal_url"].partition("#")
            assert url == f"{server.url}/appeal/{directive['id']}"
            assert fragment.startswith("token=") == (client.joined["role"] == "family")
        for name in set(clients) - expected:
            assert await frames_flow(clients[name]), f"{name} stopped receiving media"
            assert clients[name].close_code is None
        # the records carry the end reason
        status, live = await server.api("GET", "/api/v1/sessions")
        assert len(live) == len(clients) - len(expected)


@pytest.mark.parametrize("scope", ["contact:C1", "facility:F1"])
async def test_audio_only_removes_video_and_keeps_audio(server, scope):
    async with two_visits(server) as (a, b, clients):
        status, directive = await server.api(
            "POST", "/api/v1/directives", directive_body(scope, "audio-only")
        )
        assert status == 201 and directive["sessions_ended"] == 0
        expected = MATCHES[scope]
        for name in expected:
            restricted = await clients[name].wait_for("restricted")
            assert (
                restricted["action"] == "audio-only"
                and restricted["directive"]["id"] == directive["id"]
            )
        await asyncio.sleep(0.5)  # in-flight frames drain
        for name in expected:
            assert not await frames_flow(clients[name], "video", 3, timeout=1.5), (
                f"{name} still receives video"
            )
            assert await frames_flow(clients[name], "audio", 10), f"{name} lost audio"
        if scope == "contact:C1":
            # C1's video no longer reaches the kiosk, but C2's does: the kiosk keeps video.
            assert await frames_flow(clients["A.kiosk"], "video")
        for name in set(clients) - expected - {"A.kiosk"}:
            assert await frames_flow(clients[name], "video"), name
        # Lifting restores video
        status, lifted = await server.api(
            "POST", f"/api/v1/directives/{directive['id']}/lift", {"reason": "reviewed"}
        )
        assert status == 200 and lifted["status"] == "lifted"
        for name in expected:
            assert await frames_flow(clients[name], "video", 3, timeout=8), (
                f"{name} did not get video back"
            )


async def test_suspended_contact_cannot_come_back_by_any_path(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    family_token = visit["join"]["C1"]["token"]
    c1 = server.client(family_token, visit["id"], **LIGHT)
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    try:
        assert (await kiosk.connect())["type"] == "joined"
        assert (await c1.connect())["type"] == "joined"
        status, directive = await server.api(
            "POST", "/api/v1/directives", directive_body("contact:C1")
        )
        assert status == 201 and directive["sessions_ended"] == 1
        await asyncio.wait_for(c1.closed.wait(), 5)
    finally:
        await c1.close()

    # 1. join and 2. reconnect with the same still-valid token
    for _ in range(2):
        again = server.client(family_token, visit["id"], **LIGHT)
        answer = await again.connect()
        await again.close()
        assert answer["type"] == "error" and answer["code"] == "suspended"
        assert answer["directive"]["id"] == directive["id"]
        assert again.close_code == 4403
    # the refusal tells them how to appeal, with a token of their own that outlives the visit
    appeal_token = answer["directive"]["appeal_url"].split("#token=", 1)[1]
    claims = server.tokens.verify(appeal_token)
    assert claims.expires_at >= time.time() + 30 * 86400
    status, appeal = await server.api("POST", f"/api/v1/directives/{directive['id']}/appeals",
                                      {"text": "Please review"}, token=appeal_token)  # fmt: skip
    assert status == 201 and appeal["filed_by"] == "contact:C1"
    # 3. token refresh
    status, body = await server.api("POST", "/api/v1/tokens/refresh", token=family_token)
    assert status == 409 and body["error"]["code"] == "suspended"
    # 4. a new visit for the suspended contact
    now = time.time()
    status, body = await server.api("POST", "/api/v1/visits", {
        "inmate": "I1", "device": "K1", "contacts": ["C1"], "kind": "social",
        "starts_at": format_time(now + 60), "ends_at": format_time(now + 1800)})  # fmt: skip
    assert status == 409 and body["error"]["code"] == "suspended"
    # the kiosk was untouched
    assert kiosk.close_code is None
    await kiosk.close()


async def test_renegotiation_offer_is_an_admission(server):
    """A directive known to the node but not yet enforced on a session (e.g. learned from the
    cluster bus) still refuses that session's next offer (ICE restart)."""
    await seed(server)
    visit = await make_visit(server, ["C1"])
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    try:
        assert (await c1.connect())["type"] == "joined"
        policy = server.app[K.POLICY]
        from policy.directive import Directive

        now = time.time()
        known = Directive(
            id="D-learned", scope="contact:C1", action="suspend", reason="r", legal_basis="b",
            issued_by="operator:other-node", issued_at=now, starts_at=now, expires_at=now + 600,
        )  # fmt: skip
        policy.learn(known)
        server.app[K.DIRECTIVES].stopped.add(known.id)  # as if another path was about to enforce it
        await c1.pc.setLocalDescription(await c1.pc.createOffer())
        await c1.send({"type": "offer", "sdp": c1.pc.localDescription.sdp})
        await asyncio.wait_for(c1.closed.wait(), 5)
        assert c1.close_code == 4403
        assert c1.terminated["directive"]["id"] == "D-learned"
    finally:
        await c1.close()


async def test_monitor_join_is_checked_and_privileged_visits_refuse_it(server):
    await seed(server)
    social = await make_visit(server, ["C1"])
    privileged = await make_visit(server, ["D1"], inmate="I2", device="K2", kind="privileged")
    operator = server.token("operator:olga", "operator")
    monitor = server.client(operator, privileged["id"], mode="monitor")
    answer = await monitor.connect()
    await monitor.close()
    assert (
        answer["type"] == "error" and answer["code"] == "privileged" and monitor.close_code == 4403
    )
    status, events = await server.api("GET", "/api/v1/audit")
    assert any(e["action"] == "monitor.refused" and e["actor"] == "operator:olga" for e in events)

    status, directive = await server.api(
        "POST", "/api/v1/directives", directive_body(f"visit:{social['id']}")
    )
    assert status == 201
    monitor = server.client(operator, social["id"], mode="monitor")
    answer = await monitor.connect()
    await monitor.close()
    assert (
        answer["type"] == "error" and answer["code"] == "suspended" and monitor.close_code == 4403
    )


async def test_end_blocks_nothing_later(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    assert (await c1.connect())["type"] == "joined"
    status, directive = await server.api(
        "POST", "/api/v1/directives", directive_body("contact:C1", "end")
    )
    assert status == 201 and directive["sessions_ended"] == 1
    await asyncio.wait_for(c1.closed.wait(), 5)
    await c1.close()
    again = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    assert (await again.connect())["type"] == "joined"
    await again.close()


async def test_operator_ends_one_session(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    c2 = server.client(visit["join"]["C2"]["token"], visit["id"], **LIGHT)
    try:
        joined = await c1.connect()
        assert (await c2.connect())["type"] == "joined"
        status, record = await server.api("POST", f"/api/v1/sessions/{joined['session']}/end", {},
                                          token=server.token("operator:olga", "operator"))  # fmt: skip
        assert status == 200 and record["end_reason"] == "operator:olga"
        await asyncio.wait_for(c1.closed.wait(), 5)
        assert c1.close_code == 4403 and c1.terminated["reason"] == "operator:olga"
        left = await c2.wait_for("participant-left")
        assert left["participant"] == joined["session"]
        assert c2.close_code is None
    finally:
        await asyncio.gather(c1.close(), c2.close())


async def test_the_answer_does_not_wait_for_the_affected_connections_to_wind_down(server):
    """The directive's answer waits until the affected are told and their end is recorded, not
    for their close handshakes and peer-connection teardown: on a busy node those take long,
    and a stuck client must not hold up the operator."""
    import aiohttp

    await seed(server)
    visit = await make_visit(server, ["C1"])
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.url.replace("http", "ws", 1) + "/ws")
        await ws.send_json(
            {"type": "join", "token": visit["join"]["C1"]["token"], "visit": visit["id"]}
        )
        joined = await ws.receive_json(timeout=5)
        assert joined["type"] == "joined"
        session = server.app[K.SESSIONS].by_id[joined["session"]]
        torn_down = asyncio.Event()
        close_peer = session.peer.close

        async def slow_teardown() -> None:  # a peer connection that takes its time to close
            await asyncio.sleep(3)
            await close_peer()
            torn_down.set()

        session.peer.close = slow_teardown  # type: ignore[method-assign]
        started = time.monotonic()
        status, directive = await server.api("POST", "/api/v1/directives", {
            "scope": "contact:C1", "action": "suspend", "reason": "r", "legal_basis": "Rule 1",
            "expires_at": format_time(time.time() + 600)})  # fmt: skip
        answered = time.monotonic() - started
        assert status == 201 and directive["sessions_ended"] == 1
        assert answered < 2.0 and not torn_down.is_set(), f"the answer took {answered:.1f} s"
        record = await server.app[K.STORE].get_session(joined["session"])
        assert record is not None and record.end_reason == f"directive:{directive['id']}"
        assert joined["session"] not in server.app[K.SESSIONS].by_id
        told = await ws.receive_json(timeout=5)
        while told["type"] != "terminated":  # time-remaining came right after joined
            told = await ws.receive_json(timeout=5)
        assert told["directive"]["id"] == directive["id"]
        await server.app[K.ENFORCER].drain(timeout=10)
        assert torn_down.is_set() and not server.app[K.ENFORCER].closing
        await ws.close()


@pytest.fixture
async def spent(tmp_path):
    """A server whose broad scopes have 2 s of unconfirmed time a day (easily used up), and
    whose requests wait two minutes for a second supervisor."""
    from dataclasses import replace

    from policy.service import Rules
    from tests.conftest import make_config, start_server, stop_server

    rules = replace(Rules(), confirm_window_seconds=2.0, await_confirmation_seconds=120.0)
    srv = await start_server(make_config(tmp_path, rules=rules))
    try:
        yield srv
    finally:
        await stop_server(srv)


async def test_a_request_cuts_nothing_until_a_second_supervisor_confirms_it(spent):
    server = spent
    await seed(server)
    sue = server.token("operator:sue", "supervisor")
    sam = server.token("operator:sam", "supervisor")
    await use_up_unconfirmed_time(server, "facility:F1")
    async with two_visits(server, seeded=True) as (a, b, clients):
        status, refused = await server.api(
            "POST", "/api/v1/directives", directive_body("facility:F1"), token=sue
        )
        assert status == 422 and refused["error"]["code"] == "confirmation-required"
        body = directive_body("facility:F1", await_confirmation=True)
        status, request = await server.api("POST", "/api/v1/directives", body, token=sue)
        assert status == 201, request
        assert (request["status"], request["sessions_ended"]) == ("pending", 0)
        assert request["starts_on_confirmation"] and request["confirmed_by"] is None
        for name, client in clients.items():  # the request stops nothing
            assert await frames_flow(client), f"{name} stopped receiving media"
        status, live = await server.api("GET", "/api/v1/sessions")
        assert len(live) == len(clients)

        confirm = f"/api/v1/directives/{request['id']}/confirm"
        status, mine = await server.api("POST", confirm, {}, token=sue)
        assert status == 403 and mine["error"]["code"] == "self-confirmation"
        status, _ = await server.api("POST", confirm, {}, token="operator")
        assert status == 403
        status, confirmed = await server.api("POST", confirm, {}, token=sam)
        assert status == 200, confirmed
        assert (confirmed["status"], confirmed["confirmed_by"]) == ("active", "operator:sam")
        assert confirmed["starts_at"] == confirmed["confirmed_at"]
        assert confirmed["expires_at"] == request["expires_at"]
        # ended before the confirmation answered, exactly as a fresh directive's
        assert confirmed["sessions_ended"] == len(MATCHES["facility:F1"])
        for name in MATCHES["facility:F1"]:
            client = clients[name]
            await asyncio.wait_for(client.closed.wait(), 5)
            assert client.close_code == 4403, name
            assert client.terminated["reason"] == f"directive:{request['id']}"
            assert client.terminated["directive"]["expires_at"] == request["expires_at"]
        for name in ("B.kiosk", "B.D1"):
            assert await frames_flow(clients[name]), f"{name} stopped receiving media"
        again = server.client(a["join"]["C1"]["token"], a["id"], **LIGHT)
        refused_join = await again.connect()
        await again.close()
        assert refused_join["code"] == "suspended" and again.close_code == 4403
    status, verified = await server.api("GET", "/api/v1/audit/verify")
    assert status == 200 and verified["ok"] and verified["state"]["ok"], verified
