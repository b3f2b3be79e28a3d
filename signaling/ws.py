"""WebSocket signaling (`/ws`, SPEC §5): the socket's life, and the dispatch of its frames.

Admission — who may join, and the race with directives — is signaling/admission.py's; the
names of the protocol are signaling/protocol.py's. Here: a socket is admitted (or refused),
then each client frame goes to its handler, which answers with a `Problem` or nothing. A
client offer (ICE restart, renegotiation) is an admission too: `admission.blocking` first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from aiohttp import WSMsgType, web

from relay import RelayPeer, UnsupportedOffer
from signaling import admission, logs
from signaling import keys as K
from signaling import protocol as P
from signaling.admission import Refusal
from signaling.enforcer import Enforcer
from signaling.protocol import Close, Message, Problem, Reason, directive_reason
from signaling.registry import Call
from signaling.session import Session

log = logging.getLogger("parlor.ws")

MAX_SDP = 32 * 1024
MAX_PROTOCOL_ERRORS = 20


async def handle(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(request, origin):
        raise web.HTTPForbidden(text="this origin may not open calls")
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    session: Session | None = None
    try:
        outcome = await admission.admit(app, ws, request.remote)
        if isinstance(outcome, Refusal):
            await _refuse(app, ws, outcome)
            return ws
        if isinstance(outcome, admission.PresenceRequest):  # a kiosk saying it is there
            await app[K.PRESENCE].hold(ws, outcome.frame, app[K.READY].is_set())
            return ws
        session = outcome.session
        logs.session_id.set(session.id)
        log.info(
            "session %s joined visit %s as %s (%s)",
            session.id,
            session.visit.id,
            session.actor.sub,
            session.mode,
        )
        await _serve(app, session)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("signaling failed")
        if session is not None:
            await app[K.ENFORCER].end_session(session, Reason.ERROR, Close.INTERNAL_ERROR)
        elif not ws.closed:
            await ws.close(code=Close.INTERNAL_ERROR, message=b"internal error")
    finally:
        if session is not None and not session.ended:
            await app[K.ENFORCER].end_session(session, Reason.LEFT, Close.NORMAL)
    return ws


async def _refuse(app: web.Application, ws: web.WebSocketResponse, refusal: Refusal) -> None:
    if not isinstance(refusal, admission.Redirect):
        app[K.METRICS].refusals.labels(refusal.code).inc()
    if not ws.closed:
        await ws.send_json(refusal.frame())
        await ws.close(code=refusal.close, message=refusal.code.encode())


def origin_allowed(request: web.Request, origin: str) -> bool:
    """Browsers always send Origin on WebSockets: accept the server's own origin, the public
    URL's, and configured ones. Non-browser clients (the headless kiosk) send none."""
    config = request.app[K.CONFIG]
    origin = origin.rstrip("/")
    own = f"{request.scheme}://{request.host}"
    allowed = {own, *config.allowed_origins}
    if config.public_url:
        allowed.add(config.public_url.rstrip("/"))
    return origin in allowed


async def _serve(app: web.Application, session: Session) -> None:
    """Read client messages until the socket closes or the session is ended."""
    watcher = asyncio.ensure_future(_end_when_lost(app, session))
    try:
        await _read_messages(app, session)
    finally:
        if session.peer.lost.is_set():
            await watcher  # it is ending the session: let it finish
        else:
            watcher.cancel()


async def _end_when_lost(app: web.Application, session: Session) -> None:
    """A peer connection that cannot be set up or dies on its own (no ICE pair, a DTLS
    failure, ICE consent expired) ends its session with `media-failed` and close 4502: the
    client is told the cause and may try again, and the session is not listed as live."""
    await session.peer.lost.wait()
    if session.ended:
        return
    cause = session.peer.failure or P.MEDIA_FAILED_CAUSE
    log.warning("session %s (%s): media failed: %s", session.id, session.actor.sub, cause)
    message = P.MEDIA_FAILED.message(cause=cause)
    await app[K.ENFORCER].end_session(
        session, Reason.MEDIA_FAILED, Close.MEDIA_FAILED, message=message
    )


async def _read_messages(app: web.Application, session: Session) -> None:
    config, enforcer = app[K.CONFIG], app[K.ENFORCER]
    limit = config.max_message_bytes
    errors = 0
    async for msg in session.ws:
        if session.ended:
            break
        if msg.type == WSMsgType.TEXT:
            if len(msg.data.encode()) > limit:
                await session.send(P.MESSAGE_TOO_LARGE.frame(limit=limit))
                await enforcer.end_session(
                    session, Reason.ERROR, Close.TOO_LARGE, message=P.TOO_LARGE_ENDED
                )
                break
            data = admission.parse(msg.data)
            problem = P.BAD_JSON if data is None else await _dispatch(app, session, data)
        elif msg.type == WSMsgType.BINARY:
            problem = P.BINARY_NOT_SUPPORTED
        else:
            break
        if problem is not None and not session.ended:
            errors += 1
            await session.send(problem.frame())
            if errors >= MAX_PROTOCOL_ERRORS:
                await enforcer.end_session(
                    session, Reason.ERROR, Close.PROTOCOL_ERROR, message=P.TOO_MANY_ERRORS
                )
                break
    if not session.ended:
        code = session.ws.close_code
        reason = Reason.LEFT if code in (None, Close.NORMAL, Close.GOING_AWAY) else Reason.ERROR
        await enforcer.end_session(session, reason, Close.NORMAL)


Handler = Callable[[web.Application, Session, dict[str, Any]], Awaitable[Problem | None]]


async def _dispatch(app: web.Application, session: Session, data: dict[str, Any]) -> Problem | None:
    """Handle one client message; return the problem to answer with, or None."""
    handler = HANDLERS.get(data["type"])
    return P.UNKNOWN_TYPE if handler is None else await handler(app, session, data)


async def _join(app: web.Application, session: Session, data: dict[str, Any]) -> Problem | None:
    return P.ALREADY_JOINED


async def _leave(app: web.Application, session: Session, data: dict[str, Any]) -> Problem | None:
    await app[K.ENFORCER].end_session(session, Reason.LEFT, Close.NORMAL)
    return None


async def _answer(app: web.Application, session: Session, data: dict[str, Any]) -> Problem | None:
    sdp = data.get("sdp")
    if not _sdp_ok(sdp):
        return P.BAD_SDP
    async with session.lock:
        if not session.offer_outstanding:
            return P.UNEXPECTED_ANSWER
        try:
            await session.peer.accept_answer(sdp)
        except UnsupportedOffer as exc:
            await session.send(P.UNSUPPORTED_OFFER.frame(cause=exc))
            return None
        finally:
            session.offer_outstanding = False
        if session.renegotiate_again:
            await session.renegotiate()
    return None


async def _candidate(
    app: web.Application, session: Session, data: dict[str, Any]
) -> Problem | None:
    candidate, mid, index = data.get("candidate"), data.get("sdpMid"), data.get("sdpMLineIndex")
    if not isinstance(candidate, str) or len(candidate) > 1024:
        return P.BAD_CANDIDATE
    if not (mid is None or isinstance(mid, str)) or not (
        index is None or (isinstance(index, int) and 0 <= index < 64)
    ):
        return P.BAD_CANDIDATE
    if mid is None and index is None:
        return P.BAD_CANDIDATE
    if not session.negotiated and not session.offer_outstanding:
        return P.NOT_NEGOTIATED
    try:
        await session.peer.add_candidate(candidate, mid, index)
    except ValueError:
        return P.BAD_CANDIDATE
    return None


def _sdp_ok(sdp: object) -> TypeGuard[str]:
    return isinstance(sdp, str) and len(sdp) <= MAX_SDP


async def _offer(app: web.Application, session: Session, data: dict[str, Any]) -> Problem | None:
    sdp = data.get("sdp")
    if not _sdp_ok(sdp):
        return P.BAD_SDP
    enforcer = app[K.ENFORCER]
    directive = admission.blocking(
        app[K.POLICY], session
    )  # ICE restarts and renegotiations are admissions too
    if directive is not None:
        await enforcer.end_session(
            session, directive_reason(directive), Close.REFUSED, directive=directive
        )
        return None
    if admission.withdrawn(app[K.POLICY], session):
        await enforcer.end_session(session, Reason.APPROVAL_WITHDRAWN, Close.REFUSED)
        return None
    async with session.lock:
        if session.offer_outstanding:
            return P.NEGOTIATION_IN_PROGRESS
        joining = None if session.negotiated else _joining(app, session)
        try:
            answer = await session.peer.accept_offer(sdp, joining)
        except UnsupportedOffer as exc:
            await session.send(P.UNSUPPORTED_OFFER.frame(cause=exc))
        else:
            if not session.ended:
                await session.send({"type": Message.ANSWER, "sdp": answer})
                session.negotiated = True
    if joining is None:
        return None
    if session.negotiated and not session.ended:
        app[K.RECORDINGS].tap(joining.call, session)
        await joining.offer(enforcer)
    else:
        await joining.undo(enforcer)
    return None


def _joining(app: web.Application, session: Session) -> _Joining | None:
    call = app[K.SESSIONS].calls.get(session.visit.id)
    return None if call is None else _Joining(call, session)


class _Joining:
    """A session's first offer wires its peer into the call's room while the answer is being
    made (`RelayPeer.accept_offer`), so the answer carries the room's first publisher; then
    the peers whose forwarding changed are renegotiated (the joiner first). An offer refused,
    or a session ended meanwhile, is unwired again."""

    def __init__(self, call: Call, session: Session) -> None:
        self.call = call
        self.session = session
        self.changed: list[RelayPeer] = []

    def __call__(self) -> None:
        if not self.session.ended:  # ended while its offer was applied: nothing to wire
            self.changed = self.call.room.add(self.session.peer)

    async def offer(self, enforcer: Enforcer) -> None:
        await enforcer.renegotiate_peers(self.call, self.changed)

    async def undo(self, enforcer: Enforcer) -> None:  # (Room.remove: [] if it was not wired)
        await enforcer.renegotiate_peers(self.call, self.call.room.remove(self.session.peer))


HANDLERS: dict[str, Handler] = {
    Message.JOIN: _join,
    Message.LEAVE: _leave,
    Message.OFFER: _offer,
    Message.ANSWER: _answer,
    Message.CANDIDATE: _candidate,
}
