"""What the hardening suite (issue #7) speaks on the wire: servers with chosen limits and
raw WebSockets that send whatever a hostile client would.

`UNLIMITED` lifts the join and API rate limits: the matrix and the fuzzers make hundreds of
joins and calls from one address and one identity, and must meet the handlers, not the limiter.
The rate limits themselves are tested in test_input_limits.py with tight servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from signaling.ratelimit import Rate
from tests.conftest import Server, make_config, start_server, stop_server

UNLIMITED = {
    "join_rate_per_ip": Rate(1_000_000, 100_000),
    "join_rate_per_identity": Rate(1_000_000, 100_000),
    "api_rate_per_identity": Rate(1_000_000, 100_000),
}
# Every close code SPEC §5 defines, plus 1009 (aiohttp's own answer to a frame over 1 MiB).
SPEC_CLOSE_CODES = {1000, 4400, 4401, 4403, 4409, 4410, 4413, 4429, 1009}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Server]:
    """A server on 127.0.0.1 with `overrides` applied to the test configuration."""
    srv = await start_server(make_config(tmp_path, **overrides))
    try:
        yield srv
    finally:
        await stop_server(srv)


def ws_url(server: Server) -> str:
    return server.url.replace("http", "ws", 1) + "/ws"


async def exchange(
    server: Server,
    frames: list[str | bytes | dict[str, Any]],
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[list[dict[str, Any]], int | None]:
    """Open /ws, send `frames` in order, read until the server closes: (messages, close code)."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_url(server), headers=headers, max_msg_size=0)
        for frame in frames:
            if ws.closed:
                break
            with contextlib.suppress(ConnectionResetError):
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                elif isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_str(json.dumps(frame))
        messages = await read_until_closed(ws, timeout)
        return messages, ws.close_code


async def read_until_closed(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def read() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                messages.append(json.loads(msg.data))

    await asyncio.wait_for(read(), timeout)
    return messages


def join(token: str, visit: str, **extra: Any) -> dict[str, Any]:
    return {"type": "join", "token": token, "visit": visit, **extra}
