"""The staff event stream pushes audit events as they happen, and resumes from a cursor."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import make_visit, seed
from tests.integration.test_directives import LIGHT, directive_body


async def events_socket(server, token, after=None):
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(server.url.replace("http", "ws") + "/api/v1/events")
    auth = {"type": "auth", "token": token}
    if after is not None:
        auth["after"] = after
    await ws.send_json(auth)
    return http, ws


async def next_event(ws, action, timeout=5.0):
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message["type"] == "event" and message["event"]["action"] == action:
                return message["event"]


async def test_console_stream_sees_sessions_and_directives(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    http, ws = await events_socket(server, server.token("auditor:a", "auditor"))
    try:
        ready = await ws.receive_json()
        assert ready["type"] == "ready" and ready["head"] > 0
        client = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        await client.connect()
        started = await next_event(ws, "session.started")
        assert started["subject"] == f"visit:{visit['id']}" and started["actor"] == "contact:C1"
        status, directive = await server.api(
            "POST", "/api/v1/directives", directive_body("contact:C1")
        )
        issued = await next_event(ws, "directive.issued")
        assert issued["data"]["id"] == directive["id"]
        ended = await next_event(ws, "session.ended")
        assert ended["data"]["reason"] == f"directive:{directive['id']}"
        await client.close()
    finally:
        await http.close()

    # a reconnecting console resumes after the last sequence number it saw
    http, ws = await events_socket(server, server.token(), after=started["seq"])
    try:
        await ws.receive_json()
        replayed = await next_event(ws, "directive.issued")
        assert replayed["seq"] == issued["seq"]
    finally:
        await http.close()


async def test_event_stream_refuses_families_and_bad_tokens(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    for token, code in ((visit["join"]["C1"]["token"], 4403), ("nope", 4401)):
        http, ws = await events_socket(server, token)
        try:
            message = await ws.receive_json()
            assert message["type"] == "error"
            await ws.receive()
            assert ws.close_code == code
        finally:
            await http.close()
