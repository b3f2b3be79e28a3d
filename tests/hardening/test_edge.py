"""The HTTP edge (issue #15 items 4, 6, 8, 9, 10): slow clients cannot hold connections,
query strings never reach the access log, ids match in full, token answers are not cached,
and the pages may open WebSockets to this server and its public URL only."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from signaling import keys as K
from signaling.listener import EdgeLimits
from tests.conftest import make_visit, seed, wait_until
from tests.hardening.wire import UNLIMITED, running
from tests.integration.test_directives import LIGHT


async def trickle(port: int, stop: asyncio.Event, closed: list[float], started: float) -> None:
    """A slowloris connection: one header byte every 0.3 s, never the blank line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for byte in b"X-Slow: " + b"a" * 200:
            if stop.is_set():
                return
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    closed.append(time.monotonic() - started)
                    return
            except TimeoutError:
                continue
            except ConnectionError:
                closed.append(time.monotonic() - started)
                return
    finally:
        writer.close()


async def test_three_hundred_slowloris_connections_are_closed_and_a_live_call_goes_on(tmp_path):
    limits = EdgeLimits(header_timeout=2.0, body_timeout=2.0, max_per_ip=1000)
    async with running(tmp_path, edge=limits, **UNLIMITED) as srv:
        await seed(srv)
        visit = await make_visit(srv, ["C1"])
        kiosk = srv.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
        family = srv.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        try:
            await kiosk.connect()
            await family.connect()
            await family.wait_frames("audio", 20, timeout=15)
            port = int(srv.url.rsplit(":", 1)[1])
            stop, closed = asyncio.Event(), []
            started = time.monotonic()
            before = family.received.frames["audio"]
            attack = [
                asyncio.ensure_future(trickle(port, stop, closed, started)) for _ in range(300)
            ]
            await wait_until(lambda: len(closed) == 300, timeout=20)
            # every one closed by the server after the header timeout, none before
            assert (
                min(closed) >= limits.header_timeout - 0.1
                and max(closed) < limits.header_timeout + 8
            )
            assert srv.app[K.CONNECTIONS].open() <= 5  # the call's sockets, nothing of the attack
            # the call beside kept flowing: ~50 audio frames a second throughout
            elapsed = time.monotonic() - started
            assert family.received.frames["audio"] - before >= 20 * elapsed
            assert family.closed.is_set() is False and kiosk.closed.is_set() is False
            stop.set()
            await asyncio.gather(*attack)
        finally:
            await asyncio.gather(kiosk.close(), family.close())


async def test_an_address_cannot_hold_more_connections_than_its_limit(tmp_path):
    async with running(
        tmp_path, edge=EdgeLimits(header_timeout=1.5, max_per_ip=20), **UNLIMITED
    ) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        await wait_until(lambda: srv.app[K.CONNECTIONS].open() == 20)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(1), 2) == b""  # refused at once
        writer.close()
        assert srv.app[K.CONNECTIONS].refused == 1
        # the held ones send nothing: they time out, and the address may connect again
        for held_reader, _ in held:
            assert await asyncio.wait_for(held_reader.read(1), 5) == b""
        status, body = await srv.api("GET", "/healthz", token=None)
        assert status == 200 and body["ok"] is True
        for _, held_writer in held:
            held_writer.close()


async def test_a_trickled_request_body_is_answered_408(tmp_path):
    async with running(tmp_path, edge=EdgeLimits(body_timeout=1.0), **UNLIMITED) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        token = srv.token()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/v1/facilities HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"id": '
        )
        await writer.drain()
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 408") and b"body-timeout" in answer
        assert 0.9 <= time.monotonic() - started < 3
        writer.close()


async def test_query_strings_never_reach_the_access_log(tmp_path, caplog):
    from signaling.app import create_app
    from signaling.listener import listen
    from tests.conftest import make_config

    app = create_app(make_config(tmp_path, **UNLIMITED))
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    listening = await listen(app, "127.0.0.1", 0, app[K.CONNECTIONS])
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{listening.port}/api/v1/directives?token=eyJhbGciOiJIUzI1NiJ9.secret.sig"
            async with http.get(url) as response:
                assert response.status == 401
            # A recording's media grant is a bearer secret in the path: logged by name.
            grant = "eyJyZWNvcmRpbmciOiJSLTEifQ.c2lnbmF0dXJl"
            async with http.get(
                f"http://127.0.0.1:{listening.port}/recordings/media/{grant}/call"
            ) as response:
                assert response.status == 403
    finally:
        await listening.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"GET /api/v1/directives"' in line and " 401 " in line for line in lines), lines
    assert not any("token" in line or "eyJ" in line or "?" in line for line in lines), lines
    assert any('"GET /recordings/media/{grant}/call"' in line for line in lines), lines


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/facilities", {"id": "F-NL\n", "name": "x"}),
        ("/api/v1/devices", {"id": "K-NL\n", "facility": "F1"}),
        ("/api/v1/devices", {"id": "K-OK", "facility": "F1\n"}),
        ("/api/v1/inmates", {"id": "I-NL\n", "facility": "F1", "name": "x"}),
        ("/api/v1/inmates", {"id": "I-OK", "facility": "F1\n", "name": "x"}),
        ("/api/v1/contacts", {"id": "C-S-0\n", "name": "x", "minor": False}),
        ("/api/v1/contacts/C1/approvals", {"inmate": "I1\n", "status": "approved"}),
        ("/api/v1/visits", {"inmate": "I1\n", "device": "K1", "contacts": ["C1"]}),
        ("/api/v1/visits", {"inmate": "I1", "device": "K1\n", "contacts": ["C1"]}),
        ("/api/v1/visits", {"inmate": "I1", "device": "K1", "contacts": ["C1\n"]}),
        (
            "/api/v1/directives",
            {
                "scope": "contact:C1\n",
                "action": "suspend",
                "reason": "r",
                "legal_basis": "b",
                "expires_at": "2099-01-01T00:00:00Z",
            },
        ),
        (
            "/api/v1/directives",
            {
                "scope": "pair:I1\n:C1",
                "action": "suspend",
                "reason": "r",
                "legal_basis": "b",
                "expires_at": "2099-01-01T00:00:00Z",
            },
        ),
    ],
)
async def test_an_id_with_a_trailing_newline_is_refused_everywhere(server, path, body):
    await seed(server)
    window = {"starts_at": "2099-01-01T10:00:00Z", "ends_at": "2099-01-01T11:00:00Z"}
    status, answer = await server.api(
        "POST", path, {**window, **body} if "visits" in path else body
    )
    assert status == 400, answer
    assert answer["error"]["code"] in ("bad-id", "bad-scope"), answer


async def test_answers_with_tokens_or_personal_data_are_never_cached(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    async with server.http.post(
        server.url + "/api/v1/tokens/refresh",
        headers={"Authorization": f"Bearer {visit['join']['C1']['token']}"},
    ) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
    for path in (
        "/api/v1/visits",
        "/api/v1/contacts",
        "/api/v1/sessions",
        "/api/v1/audit",
        "/api/v1/nope",
    ):
        async with server.http.get(
            server.url + path, headers={"Authorization": f"Bearer {server.token()}"}
        ) as response:
            assert response.headers.get("Cache-Control") == "no-store", (path, response.status)
    token = server.token()
    async with server.http.post(
        server.url + "/api/v1/visits",
        json={"inmate": "I1", "device": "K3", "contacts": ["C1"], "starts_at": "2099-01-01T10:00:00Z",
              "ends_at": "2099-01-01T11:00:00Z"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:  # fmt: skip
        assert response.status == 201 and "token" in str(await response.json())
        assert response.headers["Cache-Control"] == "no-store"


async def test_pages_may_open_websockets_to_this_server_and_the_public_url_only(tmp_path):
    async with running(tmp_path, public_url="https://visits.example.org/", **UNLIMITED) as srv:
        for page in ("/", "/console", "/kiosk", "/join/V1"):
            async with srv.http.get(srv.url + page) as response:
                policy = response.headers["Content-Security-Policy"]
            connect = next(
                p for p in policy.split(";") if p.strip().startswith("connect-src")
            ).split()[1:]
            host = srv.url.removeprefix("http://")
            assert connect == ["'self'", f"ws://{host}", "wss://visits.example.org"], (
                page,
                connect,
            )
