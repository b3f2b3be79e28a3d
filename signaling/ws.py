"""WebSocket signaling (`/ws`, SPEC §5): admission, negotiation, and the session's lifetime.

Every admission path — join, reconnect, monitor join, and every client offer (ICE restart,
renegotiation) — asks `Policy.evaluate` about the session's subject keys first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any, TypeGuard

from aiohttp import WSMsgType, web

from policy.actor import Actor
from policy.errors import PolicyError
from policy.rfc3339 import format_time
from policy.store import SessionRecord
from policy.visit import Visit, monitor_keys, subject_keys
from relay import RelayPeer, Room, UnsupportedOffer
from signaling import keys as K
from signaling import logs
from signaling.bus import REDIRECT
from signaling.enforcer import (
    BAD_TOKEN,
    MEDIA_FAILED,
    NORMAL,
    PROTOCOL_ERROR,
    RATE_LIMITED,
    REFUSED,
    REPLACED,
    TOO_LARGE,
    UNAVAILABLE,
    VISIT_OVER,
)
from signaling.registry import Call
from signaling.session import Session
from signaling.tokens import TokenError

log = logging.getLogger("parlor.ws")

JOIN_TIMEOUT = 10.0
MAX_SDP = 32 * 1024
MAX_PROTOCOL_ERRORS = 20


class Refusal(Exception):
    """Admission refused: an `error` with `code`, then close with `close_code`."""

    def __init__(self, code: str, message: str, close_code: int, notice: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code, self.notice = code, message, close_code, notice


class Redirect(Exception):
    """The visit's call lives on another node: `redirect` with its URL, then close 4307."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


async def handle(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    config = app[K.CONFIG]
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(request, origin):
        raise web.HTTPForbidden(text="this origin may not open calls")
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    session: Session | None = None
    try:
        wait = app[K.LIMITS].join_per_ip.check(request.remote or "unknown")
        if wait:
            raise Refusal("rate-limited", f"too many joins from this address; retry in {wait:.0f} s", RATE_LIMITED)
        join = await _first_message(ws, config.max_message_bytes)
        session = await _admit(app, ws, join)
        logs.session_id.set(session.id)
        log.info("session %s joined visit %s as %s (%s)", session.id, session.visit.id, session.actor.sub, session.mode)
        await _serve(app, session)
    except Redirect as redirect:
        if not ws.closed:
            await ws.send_json({"type": "redirect", "url": redirect.url})
            await ws.close(code=REDIRECT, message=b"redirect")
    except Refusal as refusal:
        app[K.METRICS].refusals.labels(refusal.code).inc()
        error: dict[str, Any] = {"type": "error", "code": refusal.code, "message": refusal.message}
        if refusal.notice is not None:
            error["directive"] = refusal.notice
        if not ws.closed:
            await ws.send_json(error)
            await ws.close(code=refusal.close_code, message=refusal.code.encode())
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("signaling failed")
        if session is not None:
            await app[K.ENFORCER].end_session(session, "error", 1011)
        elif not ws.closed:
            await ws.close(code=1011, message=b"internal error")
    finally:
        if session is not None and not session.ended:
            await app[K.ENFORCER].end_session(session, "left", NORMAL)
    return ws


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


async def _first_message(ws: web.WebSocketResponse, limit: int) -> dict[str, Any]:
    try:
        msg = await ws.receive(timeout=JOIN_TIMEOUT)
    except TimeoutError:
        raise Refusal("join-timeout", "send a join message first", PROTOCOL_ERROR) from None
    if msg.type != WSMsgType.TEXT:
        raise Refusal("bad-frame", "the first message must be a JSON join message", PROTOCOL_ERROR)
    if len(msg.data.encode()) > limit:  # bytes, not characters: one character is up to 4 bytes
        raise Refusal("message-too-large", f"messages are limited to {limit} bytes", TOO_LARGE)
    data = _parse(msg.data)
    if data is None or data.get("type") != "join":
        raise Refusal("join-required", "the first message must be {\"type\": \"join\", ...}", PROTOCOL_ERROR)
    return data


def _parse(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also int's 4300-digit limit
        return None
    return data if isinstance(data, dict) and isinstance(data.get("type"), str) else None


async def _admit(app: web.Application, ws: web.WebSocketResponse, join: dict[str, Any]) -> Session:
    config, policy, sessions = app[K.CONFIG], app[K.POLICY], app[K.SESSIONS]
    if not app[K.READY].is_set():
        raise Refusal("unavailable", "the server cannot reach its store; try again shortly", UNAVAILABLE)
    try:
        claims = app[K.TOKENS].verify(join.get("token"))
    except TokenError as exc:
        raise Refusal(exc.code, exc.message, BAD_TOKEN) from None
    actor = claims.actor
    wait = app[K.LIMITS].join_per_identity.check(actor.sub)
    if wait:
        raise Refusal("rate-limited", f"too many joins; retry in {wait:.0f} s", RATE_LIMITED)
    visit_id = join.get("visit")
    mode = join.get("mode", "participant")
    if mode not in ("participant", "monitor"):
        raise Refusal("bad-mode", "mode must be 'monitor' or absent", PROTOCOL_ERROR)
    if not isinstance(visit_id, str) or not visit_id or len(visit_id) > 64:
        raise Refusal("bad-visit", "join needs the visit id", PROTOCOL_ERROR)
    visit = await policy.store.get_visit(visit_id)
    if visit is None:
        raise Refusal("unknown-visit", f"no visit {visit_id!r}", REFUSED)
    keys = await _identity_keys(app, actor, visit, mode)
    now = policy.clock()
    if now >= visit.ends_at:
        raise Refusal("visit-over", "this visit has ended", VISIT_OVER)
    if not visit.is_open(now, early=policy.rules.visit_early_join_seconds):
        raise Refusal("not-open-yet", f"this visit opens at {format_time(visit.starts_at)}", REFUSED)
    decision = policy.evaluate(keys)
    if not decision.admitted:
        assert decision.blocking is not None
        notice = app[K.ENFORCER].notice(actor, decision.blocking)
        raise Refusal("suspended", f"suspended until {notice['expires_at']}: {decision.blocking.reason}", REFUSED, notice)

    if sessions.would_exceed((actor.sub, visit.id, mode), config.max_sessions_per_subject):
        raise Refusal(
            "too-many-sessions",
            f"at most {config.max_sessions_per_subject} live sessions per person or device; "
            "leave another call first",
            RATE_LIMITED,
        )
    if visit.id not in sessions.calls:  # a new call: placed here, unless this node is full
        _refuse_if_overloaded(app)
        try:
            owner = await app[K.BUS].place(visit)
        except PolicyError as exc:
            raise Refusal("unavailable", exc.message, UNAVAILABLE) from None
        if owner is not None:
            raise Redirect(owner)
    call = sessions.calls.get(visit.id)
    if call is None:
        names = await _names(policy, visit)
        # Re-read after the await: a concurrent first join may have created the call meanwhile,
        # and two Call objects for one visit would never forward media between them.
        call = sessions.calls.setdefault(visit.id, Call(visit=visit, room=Room(visit.id, codec=config.codec), names=names))
    if mode == "participant" and len(call.participants()) >= config.max_participants and not any(
        s.actor.sub == actor.sub for s in call.participants()
    ):
        raise Refusal("visit-full", "this visit already has the maximum number of participants", REFUSED)

    session_id = f"S-{secrets.token_hex(6)}"
    record = SessionRecord(
        id=session_id, visit=visit.id, sub=actor.sub, role=actor.role, mode=mode,
        node=config.node_id, keys=keys, started_at=now,
    )  # fmt: skip
    try:
        await policy.session_started(record)
    except PolicyError as exc:
        raise Refusal("unavailable", exc.message, UNAVAILABLE) from None
    except OSError:
        raise Refusal("unavailable", "the server cannot reach its store; try again shortly", UNAVAILABLE) from None
    peer = RelayPeer(
        session_id, codec=config.codec, ice_servers=config.ice_servers, publish=mode == "participant",
        totals=app[K.METRICS].relay,
    )  # fmt: skip
    session = Session(
        id=session_id, visit=visit, actor=actor, mode=mode, keys=keys,
        name=call.names.get(actor.sub, actor.sub), ws=ws, peer=peer, record=record,
    )  # fmt: skip
    if decision.audio_only is not None:
        app[K.ENFORCER].restrict(session, decision.audio_only)
    # The call may have emptied (and been dropped) while we awaited the store: adopt the live one.
    call = sessions.calls.setdefault(visit.id, call)
    replaced = sessions.add(session, call)
    if replaced is not None:
        await app[K.ENFORCER].end_session(replaced, "replaced", REPLACED)
    await session.send(
        {
            "type": "joined",
            "session": session.id,
            "visit": visit.id,
            "role": actor.role,
            "mode": mode,
            "kind": visit.kind,
            "ends_at": format_time(visit.ends_at),
            "ice_servers": config.ice_servers,
            "participants": [s.public() for s in call.participants() if s is not session],
            "monitored": visit.monitored,
            "codec": config.codec,
            "audio_only": session.audio_only is not None,
        }
    )
    await session.send({"type": "time-remaining", "seconds": max(0, int(visit.ends_at - now))})
    app[K.METRICS].joins.labels(actor.role, mode).inc()
    if mode == "participant":
        joined = {"type": "participant-joined", "participant": session.public()}
        await asyncio.gather(*(s.send(joined) for s in call.sessions if s is not session and not s.ended))
    return session


def _refuse_if_overloaded(app: web.Application) -> None:
    """Admission control: a node that is full or falling behind starts no new call.

    A busy event loop delays every packet of every call on the node; past a point, ICE consent
    checks time out and all of its calls drop at once. So before that point, new calls are
    refused with `overloaded` (close 4503: retry, e.g. through the load balancer to another
    node) while the calls already here, their participants and monitors, go on.
    """
    config, sessions, metrics = app[K.CONFIG], app[K.SESSIONS], app[K.METRICS]
    if config.max_calls and len(sessions.calls) >= config.max_calls:
        raise Refusal("overloaded", f"this server is at its limit of {config.max_calls} calls; try again shortly", UNAVAILABLE)
    lag = metrics.mean_loop_lag()
    if lag > config.overload_lag_seconds:
        raise Refusal("overloaded", f"this server is too busy to start a call (event loop {lag * 1000:.0f} ms late); try again shortly", UNAVAILABLE)


async def _identity_keys(app: web.Application, actor: Actor, visit: Visit, mode: str) -> tuple[str, ...]:
    """Check that the token's identity belongs to this visit, and return its subject keys."""
    policy = app[K.POLICY]
    if mode == "monitor":
        if not actor.is_staff:
            raise Refusal("forbidden", "only operators and supervisors can monitor", REFUSED)
        if not visit.monitored:
            await policy.audit(actor, "monitor.refused", f"visit:{visit.id}", {"reason": "privileged visit"})
            raise Refusal("privileged", "privileged visits are never monitored", REFUSED)
        return monitor_keys(visit, actor.sub)
    if actor.role == "family":
        contact = actor.subject_id
        if actor.visit != visit.id or contact not in visit.contacts:
            raise Refusal("wrong-visit", "this link is for another visit", REFUSED)
        return subject_keys(visit, contact=contact)
    if actor.role == "kiosk":
        if actor.subject_id != visit.device:
            raise Refusal("wrong-device", "this visit is at another kiosk", REFUSED)
        return subject_keys(visit)
    raise Refusal("forbidden", f"role {actor.role} cannot join calls (staff join with mode 'monitor')", REFUSED)


async def _names(policy: Any, visit: Visit) -> dict[str, str]:
    names = {}
    inmate = await policy.store.get_inmate(visit.inmate)
    names[f"device:{visit.device}"] = inmate.name if inmate else visit.inmate
    for contact_id in visit.contacts:
        contact = await policy.store.get_contact(contact_id)
        names[f"contact:{contact_id}"] = contact.name if contact else contact_id
    return names


async def _serve(app: web.Application, session: Session) -> None:
    """Read client messages until the socket closes or the session is ended."""
    config, enforcer = app[K.CONFIG], app[K.ENFORCER]
    watcher = asyncio.ensure_future(_end_when_lost(app, session))
    try:
        await _read_messages(app, session, config, enforcer)
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
    cause = session.peer.failure or "the media connection failed"
    log.warning("session %s (%s): media failed: %s", session.id, session.actor.sub, cause)
    message = f"The video connection could not be kept up: {cause}."
    await app[K.ENFORCER].end_session(session, "media-failed", MEDIA_FAILED, message=message)


async def _read_messages(app: web.Application, session: Session, config: Any, enforcer: Any) -> None:
    errors = 0
    async for msg in session.ws:
        if session.ended:
            break
        if msg.type == WSMsgType.TEXT:
            if len(msg.data.encode()) > config.max_message_bytes:
                await session.send({"type": "error", "code": "message-too-large",
                                    "message": f"messages are limited to {config.max_message_bytes} bytes"})  # fmt: skip
                await enforcer.end_session(session, "error", TOO_LARGE, message="message too large")
                break
            data = _parse(msg.data)
            problem = "bad-json" if data is None else await _dispatch(app, session, data)
        elif msg.type == WSMsgType.BINARY:
            problem = "binary-not-supported"
        else:
            break
        if problem is not None and not session.ended:
            errors += 1
            await session.send({"type": "error", "code": problem, "message": _PROBLEMS.get(problem, problem)})
            if errors >= MAX_PROTOCOL_ERRORS:
                await enforcer.end_session(session, "error", PROTOCOL_ERROR, message="too many protocol errors")
                break
    if not session.ended:
        code = session.ws.close_code
        reason = "left" if code in (None, 1000, 1001) else "error"
        await enforcer.end_session(session, reason, NORMAL)


_PROBLEMS = {
    "bad-json": "messages must be JSON objects with a string 'type'",
    "binary-not-supported": "only JSON text frames are accepted",
    "unknown-type": "unknown message type",
    "already-joined": "this socket has already joined",
    "bad-sdp": "sdp must be a string of at most 32 KiB",
    "unexpected-answer": "there is no server offer to answer",
    "negotiation-in-progress": "answer the server's offer first, then send yours",
    "bad-candidate": "candidate must be an ICE candidate string with sdpMid or sdpMLineIndex",
    "not-negotiated": "send an offer first",
}


async def _dispatch(app: web.Application, session: Session, data: dict[str, Any]) -> str | None:
    """Handle one client message; return an error code for the client, or None."""
    kind = data["type"]
    if kind == "join":
        return "already-joined"
    if kind == "leave":
        await app[K.ENFORCER].end_session(session, "left", NORMAL)
        return None
    if kind == "offer":
        return await _offer(app, session, data.get("sdp"))
    if kind == "answer":
        sdp = data.get("sdp")
        if not _sdp_ok(sdp):
            return "bad-sdp"
        async with session.lock:
            if not session.offer_outstanding:
                return "unexpected-answer"
            try:
                await session.peer.accept_answer(sdp)
            except UnsupportedOffer as exc:
                await session.send({"type": "error", "code": "unsupported-offer", "message": str(exc)})
                return None
            finally:
                session.offer_outstanding = False
            if session.renegotiate_again:
                await session.renegotiate()
        return None
    if kind == "candidate":
        candidate, mid, index = data.get("candidate"), data.get("sdpMid"), data.get("sdpMLineIndex")
        if not isinstance(candidate, str) or len(candidate) > 1024:
            return "bad-candidate"
        if not (mid is None or isinstance(mid, str)) or not (index is None or (isinstance(index, int) and 0 <= index < 64)):
            return "bad-candidate"
        if mid is None and index is None:
            return "bad-candidate"
        if not session.negotiated and not session.offer_outstanding:
            return "not-negotiated"
        try:
            await session.peer.add_candidate(candidate, mid, index)
        except ValueError:
            return "bad-candidate"
        return None
    return "unknown-type"


def _sdp_ok(sdp: object) -> TypeGuard[str]:
    return isinstance(sdp, str) and len(sdp) <= MAX_SDP


async def _offer(app: web.Application, session: Session, sdp: object) -> str | None:
    if not _sdp_ok(sdp):
        return "bad-sdp"
    enforcer = app[K.ENFORCER]
    decision = app[K.POLICY].evaluate(session.keys)  # ICE restarts and renegotiations are admissions too
    if not decision.admitted:
        assert decision.blocking is not None
        await enforcer.end_session(session, f"directive:{decision.blocking.id}", REFUSED, directive=decision.blocking)
        return None
    async with session.lock:
        if session.offer_outstanding:
            return "negotiation-in-progress"
        try:
            answer = await session.peer.accept_offer(sdp)
        except UnsupportedOffer as exc:
            await session.send({"type": "error", "code": "unsupported-offer", "message": str(exc)})
            return None
        if session.ended:
            return None
        await session.send({"type": "answer", "sdp": answer})
        first = not session.negotiated
        session.negotiated = True
    if first:
        call = app[K.SESSIONS].calls.get(session.visit.id)
        if call is None:
            return None
        for peer in call.room.add(session.peer):
            other = call.session_of(peer)
            if other is not None and not other.ended:
                await app[K.ENFORCER].renegotiate(other)
    return None
