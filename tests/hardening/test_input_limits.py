"""Input limits and edge protections (issue #7): sizes, participants, rate limits, Origin,
security headers. Each limit is tested at its edge: just under is served, just over refused."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from signaling import keys as K
from signaling.ratelimit import Rate
from tests.conftest import make_visit, seed, wait_until
from tests.hardening.wire import exchange, join, read_until_closed, running, ws_url

KIB = 1024


async def joined_socket(
    server, token: str, visit: str, http: aiohttp.ClientSession, **headers: str
):
    ws = await http.ws_connect(ws_url(server), headers=headers or None, max_msg_size=0)
    await ws.send_json(join(token, visit))
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "joined", first
    return ws


async def next_error(ws) -> dict:
    while True:
        message = await ws.receive_json(timeout=5)
        if message["type"] == "error":
            return message


# -- sizes ---------------------------------------------------------------------------------
async def test_sdp_over_32_kib_is_bad_sdp_and_the_session_goes_on(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    async with aiohttp.ClientSession() as http:
        ws = await joined_socket(server, visit["join"]["C1"]["token"], visit["id"], http)
        over = "v=0\r\n" + "a" * (
            32 * KIB
        )  # 32 KiB + 5: over MAX_SDP, under the 64 KiB message cap
        for kind in ("offer", "answer"):
            await ws.send_json({"type": kind, "sdp": over})
            assert (await next_error(ws))["code"] == "bad-sdp", kind
        # at the limit it is parsed (and refused as an SDP, not for its size)
        await ws.send_json({"type": "offer", "sdp": "v=0\r\n" + "a" * (32 * KIB - 5)})
        assert (await next_error(ws))["code"] == "unsupported-offer"
        assert not ws.closed
        await ws.send_json({"type": "leave"})
        await read_until_closed(ws)
        assert ws.close_code == 1000


@pytest.mark.parametrize("joined_first", [False, True], ids=["before-join", "after-join"])
async def test_text_frame_over_64_kib_closes_4413(server, joined_first):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    first = [join(visit["join"]["C1"]["token"], visit["id"])] if joined_first else []
    # 64 KiB of JSON is served (an unknown type after a join; not a join before one) ...
    at_limit = json.dumps({"type": "x", "pad": ""})
    at_limit = at_limit[:-2] + "p" * (64 * KIB - len(at_limit)) + '"}'
    assert len(at_limit.encode()) == 64 * KIB
    messages, code = await exchange(server, [*first, at_limit, {"type": "leave"}])
    assert messages[-1]["code"] == ("unknown-type" if joined_first else "join-required")
    assert code == (1000 if joined_first else 4400)
    # ... one byte more is refused, and so are 64 KiB of characters that are 4 bytes each
    for frame in (at_limit[:-2] + 'p"}', "\N{GRINNING FACE}" * (16 * KIB + 1)):
        messages, code = await exchange(server, [*first, frame, {"type": "leave"}])
        errors = [m for m in messages if m["type"] == "error"]
        assert (
            errors
            and errors[-1]["code"] == "message-too-large"
            and "65536 bytes" in errors[-1]["message"]
        )
        assert code == 4413


@pytest.mark.parametrize("joined_first", [False, True], ids=["before-join", "after-join"])
async def test_frame_over_1_mib_is_closed(server, joined_first):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    first = [join(visit["join"]["C1"]["token"], visit["id"])] if joined_first else []
    for frame in ("x" * (KIB * KIB + 1), b"\x00" * (KIB * KIB + 1)):
        _, code = await exchange(server, [*first, frame])
        assert code in (1009, 4413), code
    status, sessions = await server.api("GET", "/api/v1/sessions")
    assert status == 200 and sessions == []  # nothing left behind


async def test_rest_body_over_64_kib_is_a_json_error(server):
    padded = json.dumps({"id": "F9", "name": "Padded"}).encode()
    at_limit = padded + b" " * (64 * KIB - len(padded))
    status, answer = await server.api("POST", "/api/v1/facilities", raw=at_limit)
    assert status == 201, answer
    status, answer = await server.api("POST", "/api/v1/facilities", raw=at_limit + b" ")
    assert status in (400, 413) and answer["error"]["code"] == "body-too-large", answer

    async def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(5):
            yield b" " * (20 * KIB)

    headers = {"Authorization": f"Bearer {server.token()}", "Content-Type": "application/json"}
    async with server.http.post(
        server.url + "/api/v1/facilities", data=chunks(), headers=headers
    ) as response:
        answer = await response.json()
        assert response.status in (400, 413) and answer["error"]["code"] == "body-too-large"
        assert response.headers["Content-Type"].startswith("application/json")


async def test_rest_body_split_over_tcp_segments_is_read_whole(server):
    """A body that arrives in pieces (any real network) is one body, not a truncated one."""
    body = b'{"id": "FS",' + b" " * 2000 + b'"name": "Split"}'
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (f"POST /api/v1/facilities HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token()}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
        for piece in (head.encode() + body[:100], body[100:1500], body[1500:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]


# -- participants ----------------------------------------------------------------------------
async def test_a_visit_holds_at_most_five_participants(server):
    """Kiosk + 4 contacts is both the visit rule and the live cap: a fifth contact cannot even
    be put on a visit, so with the default rules no sixth participant exists to refuse."""
    await seed(server, contacts=5)
    status, answer = await server.api("POST", "/api/v1/visits", {
        "inmate": "I1", "device": "K1", "contacts": ["C1", "C2", "C3", "C4", "C5"],
        "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T01:00:00Z"})  # fmt: skip
    assert status == 422 and answer["error"]["code"] == "too-many-contacts"
    visit = await make_visit(server, ["C1", "C2", "C3", "C4"])
    clients = [
        server.client(visit["join"][n]["token"], visit["id"])
        for n in ("device", "C1", "C2", "C3", "C4")
    ]
    try:
        for client in clients:
            assert (await client.connect(offer=False))["type"] == "joined"
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_the_participant_over_the_cap_is_refused_visit_full(tmp_path):
    async with running(tmp_path, max_participants=3) as server:
        await seed(server)
        visit = await make_visit(server, ["C1", "C2", "C3"])
        tokens = visit["join"]
        clients = [server.client(tokens[n]["token"], visit["id"]) for n in ("device", "C1", "C2")]
        late = server.client(tokens["C3"]["token"], visit["id"])
        again = server.client(tokens["C1"]["token"], visit["id"])
        monitor = server.client(
            server.token("operator:olga", "operator"), visit["id"], mode="monitor"
        )
        try:
            for client in clients:
                assert (await client.connect(offer=False))["type"] == "joined"
            refused = await late.connect(offer=False)
            assert refused["code"] == "visit-full" and late.close_code == 4403
            # a full visit still takes back someone already in it, and a silent monitor
            assert (await again.connect(offer=False))["type"] == "joined"
            await asyncio.wait_for(clients[1].closed.wait(), 5)
            assert clients[1].close_code == 4409
            assert (await monitor.connect(offer=False))["type"] == "joined"
        finally:
            await asyncio.gather(*(c.close() for c in [*clients, late, again, monitor]))


async def test_one_person_holds_at_most_the_configured_sessions(tmp_path):
    """Replacing one's own session (same visit, same mode) never counts against the cap."""
    async with running(tmp_path, max_sessions_per_subject=2) as server:
        await seed(server)
        visits = [
            await make_visit(server, ["C1"]),
            await make_visit(server, ["D1"], inmate="I2", device="K2"),
            await make_visit(server, ["C2"], device="K3"),
        ]
        olga = server.token("operator:olga", "operator")
        first, second, third, again = (
            server.client(olga, v["id"], mode="monitor") for v in [*visits, visits[1]]
        )
        other = server.client(
            server.token("operator:omar", "operator"), visits[2]["id"], mode="monitor"
        )
        try:
            assert (await first.connect(offer=False))["type"] == "joined"
            assert (await second.connect(offer=False))["type"] == "joined"
            refused = await third.connect(offer=False)
            assert refused["code"] == "too-many-sessions" and third.close_code == 4429
            assert "at most 2 live sessions" in refused["message"]
            assert (await other.connect(offer=False))["type"] == "joined"  # someone else: fine
            assert (await again.connect(offer=False))["type"] == "joined"  # replaces `second`
            await asyncio.wait_for(second.closed.wait(), 5)
            assert second.close_code == 4409
            await first.close()
            await wait_until(
                lambda: len(server.app[K.SESSIONS].by_sub.get("operator:olga", ())) == 1
            )
            third = server.client(olga, visits[2]["id"], mode="monitor")
            assert (await third.connect(offer=False))["type"] == "joined"  # room again
        finally:
            await asyncio.gather(*(c.close() for c in (first, second, third, again, other)))


async def test_a_full_node_starts_no_new_call_but_keeps_its_calls_whole(tmp_path):
    async with running(tmp_path, max_calls=1) as server:
        await seed(server)
        here = await make_visit(server, ["C1"])
        new = await make_visit(server, ["D1"], inmate="I2", device="K2")
        kiosk = server.client(here["join"]["device"]["token"], here["id"])
        family = server.client(here["join"]["C1"]["token"], here["id"])
        monitor = server.client(
            server.token("operator:olga", "operator"), here["id"], mode="monitor"
        )
        refused = server.client(new["join"]["device"]["token"], new["id"])
        try:
            assert (await kiosk.connect(offer=False))["type"] == "joined"
            answer = await refused.connect(offer=False)
            assert answer["code"] == "overloaded" and refused.close_code == 4503
            assert "limit of 1 calls" in answer["message"]
            # the call already here is completed and watched as usual
            assert (await family.connect(offer=False))["type"] == "joined"
            assert (await monitor.connect(offer=False))["type"] == "joined"
            metrics = server.app[K.METRICS].registry
            assert metrics.get_sample_value("parlor_refusals_total", {"code": "overloaded"}) == 1
        finally:
            await asyncio.gather(*(c.close() for c in (kiosk, family, monitor, refused)))


async def test_a_node_whose_event_loop_lags_starts_no_new_call(tmp_path):
    async with running(tmp_path, overload_lag_seconds=0.2) as server:
        await seed(server)
        visit = await make_visit(server, ["C1"])
        metrics = server.app[K.METRICS]
        for _ in range(6):
            metrics.lagged(0.35)  # as measure_loop_lag records it
        slow = server.client(visit["join"]["device"]["token"], visit["id"])
        later = server.client(visit["join"]["device"]["token"], visit["id"])
        try:
            answer = await slow.connect(offer=False)
            assert answer["code"] == "overloaded" and slow.close_code == 4503
            assert "350 ms late" in answer["message"]
            for _ in range(6):
                metrics.lagged(0.01)
            assert (await later.connect(offer=False))["type"] == "joined"
        finally:
            await asyncio.gather(slow.close(), later.close())


# -- rate limits -----------------------------------------------------------------------------
async def test_join_rate_limit_per_address(tmp_path):
    async with running(tmp_path, join_rate_per_ip=Rate(3, 0.1)) as server:
        await seed(server)
        visit = await make_visit(server, ["C1", "C2", "C3"])
        for name in ("device", "C1", "C2"):
            messages, code = await exchange(
                server, [join(visit["join"][name]["token"], visit["id"]), {"type": "leave"}]
            )
            assert messages[0]["type"] == "joined" and code == 1000
        # the fourth socket from this address is refused before it can say anything
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(ws_url(server))
            messages = await read_until_closed(ws)
        assert ws.close_code == 4429 and messages[-1]["code"] == "rate-limited"
        assert "too many joins from this address" in messages[-1]["message"]
        assert "retry in 10 s" in messages[-1]["message"]


async def test_join_rate_limit_per_identity(tmp_path):
    async with running(tmp_path, join_rate_per_identity=Rate(3, 0.1)) as server:
        await seed(server)
        visit = await make_visit(server, ["C1", "C2"])
        c1 = join(visit["join"]["C1"]["token"], visit["id"])
        for _ in range(3):
            messages, code = await exchange(server, [c1, {"type": "leave"}])
            assert messages[0]["type"] == "joined" and code == 1000
        messages, code = await exchange(server, [c1])
        assert code == 4429 and messages[-1]["code"] == "rate-limited"
        assert messages[-1]["message"].startswith("too many joins; retry in")
        # someone else from the same address is not held back
        messages, code = await exchange(
            server, [join(visit["join"]["C2"]["token"], visit["id"]), {"type": "leave"}]
        )
        assert messages[0]["type"] == "joined" and code == 1000


async def test_api_rate_limit_answers_429_with_retry_after(tmp_path):
    async with running(tmp_path, api_rate_per_identity=Rate(5, 0.5)) as server:
        busy = server.token("operator:busy", "operator")
        for _ in range(5):
            status, _ = await server.api("GET", "/api/v1/facilities", token=busy)
            assert status == 200
        headers = {"Authorization": f"Bearer {busy}"}
        async with server.http.get(server.url + "/api/v1/facilities", headers=headers) as response:
            answer = await response.json()
            assert response.status == 429 and answer["error"]["code"] == "rate-limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 2
        status, _ = await server.api(
            "GET", "/api/v1/facilities", token=server.token("operator:calm", "operator")
        )
        assert status == 200


# -- Origin ------------------------------------------------------------------------------------
async def test_websocket_origin_check(tmp_path):
    async with running(tmp_path, allowed_origins=("https://visits.example.org",)) as server:
        await seed(server)
        visit = await make_visit(server, ["C1"])
        frames = [join(visit["join"]["C1"]["token"], visit["id"]), {"type": "leave"}]
        for origin in ("https://evil.example.com", "null", server.url.replace("127.0.0.1", "localhost"),
                       server.url.replace("http:", "https:")):  # fmt: skip
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await exchange(server, frames, headers={"Origin": origin})
            assert refused.value.status == 403, origin  # refused before any upgrade
        for headers in ({"Origin": server.url}, {"Origin": server.url + "/"},
                        {"Origin": "https://visits.example.org"}, None):  # fmt: skip
            messages, code = await exchange(server, frames, headers=headers)
            assert messages[0]["type"] == "joined" and code == 1000, headers


# -- headers -----------------------------------------------------------------------------------
async def test_pages_send_csp_nosniff_and_no_referrer(server):
    for path in ("/", "/join/V-anything", "/kiosk", "/console", "/appeal/D-anything"):
        async with server.http.get(server.url + path) as response:
            assert response.status == 200, path
            csp = response.headers.get("Content-Security-Policy", "")
            assert (
                "default-src 'self'" in csp
                and "frame-ancestors 'none'" in csp
                and "script-src 'self'" in csp
            )
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert response.headers.get("X-Content-Type-Options") == "nosniff", path
            assert response.headers.get("Referrer-Policy") == "no-referrer", path
    for path in (
        "/static/call.js",
        "/api/v1/openapi.json",
        "/healthz",
        "/api/v1/facilities",
        "/nope",
        "/static/nope.js",
    ):
        async with server.http.get(server.url + path) as response:
            assert response.headers.get("X-Content-Type-Options") == "nosniff", path
            assert response.headers.get("Referrer-Policy") == "no-referrer", path
