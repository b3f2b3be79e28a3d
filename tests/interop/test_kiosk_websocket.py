"""The GStreamer kiosk's own RFC 6455 client (tests/harness/gst_kiosk.py), on the wire.

The system Python that runs the kiosk has no WebSocket library, so the kiosk carries one; if
it framed, masked or closed wrongly, the interop tests would blame the server. Here it talks
to aiohttp's server (which refuses unmasked client frames) and to a raw socket that sends
what aiohttp never would: fragments with a ping in between, a masked server frame.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web

from tests.conftest import wait_until
from tests.harness.gst_kiosk import WS_GUID, WebSocket, WebSocketError


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """serve(handler) -> the ws:// URL of an aiohttp app answering /ws with `handler`."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.WebSocketResponse], Awaitable[None]]) -> str:
        async def endpoint(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=False)
            await ws.prepare(request)
            await handler(ws)
            return ws

        app = web.Application()
        app.router.add_get("/ws", endpoint)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"ws://127.0.0.1:{port}/ws"

    yield start
    for runner in runners:
        await runner.cleanup()


def first_message(url: str) -> tuple[str, object]:
    """Connect, return the first message (a protocol error: ("error", its close code), after
    closing with that code), disconnect. Blocking: run it in a thread."""
    client = WebSocket(url)
    try:
        return client.receive()
    except WebSocketError as exc:
        client.close(exc.code, str(exc))
        return "error", exc.code
    finally:
        client.shutdown()


async def test_text_messages_of_every_length_encoding_arrive_intact(serve) -> None:
    async def echo(ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)

    url = await serve(echo)
    texts = ["", "hi", "é" * 100, "x" * 300, "y" * 70_000]  # 7-bit, 16-bit and 64-bit lengths

    def talk() -> list[tuple[str, object]]:
        client = WebSocket(url)
        got = []
        for text in texts:
            client.send_text(text)
            got.append(client.receive())
        client.close(1000)
        client.shutdown()
        return got

    assert await asyncio.to_thread(talk) == [("text", t) for t in texts]


async def test_a_ping_is_answered_and_a_close_code_reaches_the_client(serve) -> None:
    seen: dict[str, object] = {}

    async def ping_then_close(ws: web.WebSocketResponse) -> None:
        await ws.ping(b"are you there")
        pong = await ws.receive()
        seen["pong"] = (pong.type, pong.data)
        await ws.close(code=4403, message=b"refused by policy")

    url = await serve(ping_then_close)

    assert await asyncio.to_thread(first_message, url) == ("close", (4403, "refused by policy"))
    assert seen["pong"] == (WSMsgType.PONG, b"are you there")


async def raw_server(frames: bytes) -> tuple[str, asyncio.Server, list[bytes]]:
    """A socket that completes the handshake, sends `frames` and records what comes back."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID.encode()).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frames
        )
        await writer.drain()
        received.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws", server, received


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    if mask is None:
        return head + bytes([len(payload)]) + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + bytes([0x80 | len(payload)]) + mask + masked


def unmask(data: bytes) -> tuple[int, bytes]:
    """Opcode and payload of the client's one (masked, short) frame."""
    assert data[1] & 0x80, "client frames must be masked"
    length, mask = data[1] & 0x7F, data[2:6]
    return data[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data[6 : 6 + length]))


async def test_fragments_with_a_ping_between_make_one_message() -> None:
    frames = frame(0x1, b"hel", fin=False) + frame(0x9, b"p") + frame(0x0, b"lo")
    url, server, received = await raw_server(frames)
    async with server:
        assert await asyncio.to_thread(first_message, url) == ("text", "hello")
        await wait_until(lambda: received, timeout=5)
    assert unmask(received[0]) == (0xA, b"p")  # the pong, masked


async def test_a_close_frame_is_echoed_with_its_code() -> None:
    url, server, received = await raw_server(frame(0x8, struct.pack("!H", 4403) + b"policy"))
    async with server:
        assert await asyncio.to_thread(first_message, url) == ("close", (4403, "policy"))
        await wait_until(lambda: received, timeout=5)
    opcode, payload = unmask(received[0])
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 4403


async def test_a_masked_server_frame_is_a_protocol_error_closed_with_1002() -> None:
    url, server, received = await raw_server(frame(0x1, b"hi", mask=b"\x01\x02\x03\x04"))
    async with server:
        assert await asyncio.to_thread(first_message, url) == ("error", 1002)
        await wait_until(lambda: received, timeout=5)
    opcode, payload = unmask(received[0])
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1002
