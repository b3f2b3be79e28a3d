"""The staff event stream (`/api/v1/events`, WebSocket): live changes pushed to the console.

It tails the audit log — every state change is an audit event with a sequence number, on
this node or (through the cluster bus) on any other — so the console never polls and a
reconnecting console resumes from the last sequence number it saw.

Protocol: the client's first message is `{"type": "auth", "token": T, "after": SEQ?}` (the
token travels in the message, never in a URL that gets logged); the server answers
`{"type": "ready", "head": SEQ}` and then sends `{"type": "event", "event": {...}}` for every
audit event after `after` (default: the current head), in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import WSMsgType, web

from policy.errors import StoreUnavailable
from signaling import keys as K
from signaling import protocol as P
from signaling.protocol import Close, Error, Message
from signaling.tokens import TokenError

log = logging.getLogger("parlor.events")

STAFF_AND_AUDITORS = ("operator", "supervisor", "auditor")
BATCH = 200


async def handle(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=16 * 1024)
    await ws.prepare(request)
    try:
        msg = await ws.receive(timeout=10)
    except TimeoutError:
        await ws.close(code=Close.PROTOCOL_ERROR, message=Error.AUTH_TIMEOUT.encode())
        return ws
    auth = None
    if msg.type == WSMsgType.TEXT:
        with contextlib.suppress(ValueError, RecursionError):
            auth = json.loads(msg.data)
    if ws.closed:  # aiohttp closed it already (a frame over max_msg_size: 1009)
        return ws
    if not isinstance(auth, dict) or auth.get("type") != Message.AUTH:
        await _refuse(ws, P.AUTH_REQUIRED.frame(), Close.PROTOCOL_ERROR)
        return ws
    try:
        actor = app[K.TOKENS].verify(auth.get("token")).actor
    except TokenError as exc:
        await _refuse(
            ws, {"type": Message.ERROR, "code": exc.code, "message": exc.message}, Close.BAD_TOKEN
        )
        return ws
    if actor.role not in STAFF_AND_AUDITORS:
        await _refuse(ws, P.STAFF_AND_AUDITORS_ONLY.frame(), Close.REFUSED)
        return ws
    store = app[K.STORE]
    after = auth.get("after")
    cursor = after if isinstance(after, int) and 0 <= after <= store.head_seq else store.head_seq
    await ws.send_json({"type": Message.READY, "head": store.head_seq})
    reader = asyncio.create_task(_drain(ws))
    try:
        while not ws.closed:
            waiter = asyncio.ensure_future(store.wait_beyond(cursor, timeout=15.0))
            await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():  # the console went away
                waiter.cancel()
                break
            if not waiter.result():
                continue
            for event in await store.audit_events(after=cursor, limit=BATCH):
                await ws.send_json({"type": Message.EVENT, "event": event.to_json()})
                cursor = event.seq
    except (ConnectionError, RuntimeError):
        pass
    except StoreUnavailable as exc:  # the console reconnects and resumes from its last seq
        log.warning("event stream: store unavailable: %s", exc.message)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await _refuse(ws, P.STREAM_STORE_UNREACHABLE.frame(), Close.UNAVAILABLE)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if not ws.closed:
            await ws.close()
    return ws


async def _refuse(ws: web.WebSocketResponse, error: dict[str, str], code: Close) -> None:
    await ws.send_json(error)
    await ws.close(code=code, message=error["code"].encode())


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client frames so pings and the close handshake are processed."""
    async for _ in ws:
        pass
