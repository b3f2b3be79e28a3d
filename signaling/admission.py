"""Admission: the one owner of letting a session in (SPEC §3, §4, §5).

`admit` handles every join — a first join, a reconnect (a join of an identity already live,
which replaces the older session), a monitor join — and returns an `Admission` or a
`Refusal`: one error style, whatever refused it (a token, a rate limit, policy, capacity, the
store, another node holding the call). A re-offer (ICE restart, renegotiation) is re-checked
with `blocking`, a token refresh with `refresh`; all of them take their subject keys from
`subject_keys`, so a kiosk's refresh under `facility:F` is refused like its join.

Why no admission can outlive a directive issued while it is in flight
--------------------------------------------------------------------

SPEC §4: once a directive has answered, no matching session is live. The node runs on one
event-loop thread, so code between two `await`s runs without anything interleaving. Two
such synchronous blocks matter:

- A (admission, `_register`): evaluate the current directive set against the session's
  keys, and put the session in the live-session index (provisional: not yet told `joined`).
- D (a directive, signaling/directives.py): put the directive in the in-memory directive
  index and halt every matching session of the live-session index (`Enforcer.stop`). On the
  issuing node D follows the directive's commit; on another node it is what the cluster bus
  does when it learns the directive.

A and D never interleave, so one of them ran first:

- A first: the session is in the live-session index when D runs, so D finds it and halts it
  (synchronously: it is ended and out of the index before D's block ends).
- D first: A's evaluation sees the directive and refuses the session (`suspended`). (An
  `end` directive blocks no later admission: such a session is later than the directive.)

After A, every `await` of the admission is followed by a check that the session was not
ended meanwhile (`_check`); a provisional session that was is refused with why (for a
directive: `suspended` with the directive's notice, close 4403) and was never reported as
joined to anyone: `joined` and `participant-joined` come only after the last check, and
`GET /sessions` lists it no longer once the directive has answered, because the directive's
answer waits for every end it caused to be recorded. On another node the same holds from
the moment that node learns the directive (the bus delivers it after the commit).

The same block A also reads what else can stop admitting a session while its admission is
in flight, each kept in memory and changed in a block like D: the contact's approval for the
inmate (`Policy.approvals`; a withdrawal halts `pair:I:C` in signaling/approvals.py), and the
visit's newest version (`Policy.visit_changes`; a cancellation halts `visit:V` in
signaling/visits.py). So a withdrawn approval or a cancelled visit is refused or ended
exactly as a directive is (`not-approved`, 4403; `visit-cancelled`, 4410).

A minor (policy/guardian.py) is decided in the same block too: refused `guardian-required`
when none of their guardians on the visit is approved any more, else placed *with* a guardian
of theirs who is joined in the call, or held back (`waiting`: the relay forwards nothing to or
from them) until one is. Once any session is joined (`_welcome`) the call's minors are stepped
again, and when one ends the enforcer's `halt` does the same, in its synchronous block: so a
guardian halted by a directive pauses their minor at the moment the directive stops them, and
a guardian the directive refused never counts as present.

The audit log of such a session: its start is written from A on (the write begins in the
block), so a directive that ends it meanwhile waits for that write and then records the end
(`Enforcer.finish`): `session.started` then `session.ended` with reason `directive:<id>`,
and the directive's `sessions_ended` counts it. Every session whose start was recorded has
its end recorded and is counted; one whose start write failed (the store was unreachable)
has neither, and is refused `unavailable`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from policy.actor import Actor
from policy.directive import Directive
from policy.errors import PolicyError, StoreUnavailable
from policy.guardian import Ward, may_wait, ward_of
from policy.rfc3339 import format_time
from policy.roster import Device
from policy.service import Policy
from policy.session import SessionRecord
from policy.visit import Visit, device_keys, monitor_keys
from policy.visit import subject_keys as visit_keys
from relay import RelayPeer, Room
from signaling import keys as K
from signaling import protocol as P
from signaling.protocol import Close, Error, Message, Problem, Reason, cancelled_text
from signaling.registry import Call
from signaling.session import Ending, Session
from signaling.tokens import TokenError

log = logging.getLogger("parlor.admission")

JOIN_TIMEOUT = 10.0
MODES = ("participant", "monitor")


class Refusal(Exception):
    """A session not admitted: an `error` frame (`code`, `message`, with the directive's
    notice when one refused it), then a close with `close`."""

    def __init__(
        self, code: str, message: str, close: int, notice: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.close, self.notice = code, message, close, notice

    @classmethod
    def of(
        cls, problem: Problem, *, notice: dict[str, Any] | None = None, **values: Any
    ) -> Refusal:
        assert problem.close is not None, f"{problem.code} does not end a session"
        return cls(problem.code, problem.message(**values), problem.close, notice)

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": Message.ERROR, "code": self.code, "message": self.message}
        if self.notice is not None:
            frame["directive"] = self.notice
        return frame


class Redirect(Refusal):
    """Not here: the visit's call lives on another node (`redirect` with its URL, close 4307)."""

    def __init__(self, url: str) -> None:
        super().__init__(Message.REDIRECT, url, Close.REDIRECT)
        self.url = url

    def frame(self) -> dict[str, Any]:
        return {"type": Message.REDIRECT, "url": self.url}


@dataclass(frozen=True)
class Admission:
    """A session let in: it was told `joined` (a directive may have ended it since; its frame
    loop then finds the socket closed)."""

    session: Session


@dataclass(frozen=True)
class PresenceRequest:
    """Not a join: a kiosk's presence connection (its first frame), for signaling/presence.py."""

    frame: dict[str, Any]


async def admit(
    app: web.Application, ws: web.WebSocketResponse, remote: str | None
) -> Admission | Refusal | PresenceRequest:
    """Read the join and admit its session, or say why not (see the module's docstring)."""
    try:
        join = await _join_message(app, ws, remote)
        if join["type"] == Message.PRESENCE:
            return PresenceRequest(join)
        actor = _identify(app, join)
        visit_id, mode = _wanted(join)
        visit = await _visit(app, visit_id)
        keys = await _keys(app, actor, visit, mode)
        guardians_mark = app[K.GUARDIANS].mark()
        ward = await _ward(app, actor, visit, mode)
        _joinable(app[K.POLICY], visit)
        calls = app[K.SESSIONS].calls
        _decide(app, actor, visit, mode, keys, calls.get(visit.id), ward)  # early: cheap
        call = await _call(app, visit)
        ward = _current_ward(app, ward, guardians_mark, visit)  # no await until registered
        session, replaced = _register(app, ws, actor, visit, mode, keys, call, ward)
        return await _welcome(app, session, replaced)
    except Refusal as refusal:
        return refusal
    except StoreUnavailable as exc:  # a read before the session was registered
        log.warning("join refused: store unavailable: %s", exc.message)
        return Refusal.of(P.STORE_UNREACHABLE)


def subject_keys(
    actor: Actor,
    *,
    visit: Visit | None = None,
    device: Device | None = None,
    mode: str = "participant",
) -> tuple[str, ...]:
    """The subject keys of `actor`'s session on `visit` (SPEC §4), once the identity is known
    to belong there; for a kiosk's token refresh outside a visit, those of its `device`.
    The one function that says which directives can match a person or a device."""
    if mode == "monitor":
        assert visit is not None
        if not actor.is_staff:
            raise Refusal.of(P.MONITOR_STAFF_ONLY)
        if not visit.monitored:
            raise Refusal.of(P.PRIVILEGED)
        return monitor_keys(visit, actor.sub)
    if actor.role == "family":
        assert visit is not None
        contact = actor.subject_id
        if actor.visit != visit.id or contact not in visit.contacts:
            raise Refusal.of(P.WRONG_VISIT)
        return visit_keys(visit, contact=contact)
    if actor.role == "kiosk":
        if visit is None:
            assert device is not None
            return device_keys(device.facility, device.id)
        if actor.subject_id != visit.device:
            raise Refusal.of(P.WRONG_DEVICE)
        return visit_keys(visit)
    raise Refusal.of(P.ROLE_CANNOT_JOIN, role=actor.role)


def blocking(policy: Policy, session: Session) -> Directive | None:
    """A re-offer (ICE restart, renegotiation) is an admission too: the directive that refuses
    the session's keys now, if any."""
    return policy.evaluate(session.keys).blocking


def withdrawn(policy: Policy, session: Session) -> bool:
    """A re-offer of a family member whose approval for the inmate is no longer `approved`."""
    return session.role == "family" and not policy.approvals.approved(
        session.actor.subject_id, session.visit.inmate
    )


async def refresh(app: web.Application, actor: Actor) -> Refusal | float:
    """May a family member or kiosk have a fresh token? Its lifetime in seconds, or why not."""
    policy, tokens = app[K.POLICY], app[K.TOKENS]
    visit = None
    try:
        if actor.role == "family":
            assert actor.visit is not None
            visit = await policy.get_visit(actor.visit)
            keys = subject_keys(actor, visit=visit)
            ttl = visit.ends_at - tokens.clock() + app[K.CONFIG].join_link_grace_seconds
        else:
            device = await policy.get_device(actor.subject_id)
            keys = subject_keys(actor, device=device)
            ttl = app[K.CONFIG].device_token_ttl
    except Refusal as refusal:
        return refusal
    # From here to the answer, no `await`: what decides is read in one block, as for a join.
    decision = policy.evaluate(keys)
    if decision.blocking is not None:
        notice = app[K.ENFORCER].notice(actor, decision.blocking)
        return Refusal(Error.SUSPENDED, P.API_SUSPENDED.message(), Close.REFUSED, notice)
    if visit is not None:
        visit = policy.visit_changes.current(visit)
        if visit.status == "cancelled":
            return Refusal.of(P.VISIT_CANCELLED, why=P.API_VISIT_CANCELLED.message())
        if not policy.approvals.approved(actor.subject_id, visit.inmate):
            return Refusal(Error.NOT_APPROVED, P.API_NOT_APPROVED.message(), Close.REFUSED)
    if ttl <= 0:
        return Refusal.of(P.VISIT_OVER)
    return ttl


# -- the steps, in order --------------------------------------------------------------------
async def _join_message(
    app: web.Application, ws: web.WebSocketResponse, remote: str | None
) -> dict[str, Any]:
    wait = app[K.LIMITS].join_per_ip.check(remote or "unknown")
    if wait:
        raise Refusal.of(P.JOINS_FROM_ADDRESS, wait=wait)
    limit = app[K.CONFIG].max_message_bytes
    try:
        msg = await ws.receive(timeout=JOIN_TIMEOUT)
    except TimeoutError:
        raise Refusal.of(P.JOIN_TIMEOUT) from None
    if msg.type != WSMsgType.TEXT:
        raise Refusal.of(P.BAD_FIRST_FRAME)
    if len(msg.data.encode()) > limit:  # bytes, not characters: one character is up to 4 bytes
        raise Refusal.of(P.FIRST_TOO_LARGE, limit=limit)
    data = parse(msg.data)
    if data is None or data.get("type") not in (Message.JOIN, Message.PRESENCE):
        raise Refusal.of(P.JOIN_REQUIRED)
    return data


def parse(text: str) -> dict[str, Any] | None:
    """A client frame: a JSON object with a string `type`, or None."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also int's 4300-digit limit
        return None
    return data if isinstance(data, dict) and isinstance(data.get("type"), str) else None


def _identify(app: web.Application, join: dict[str, Any]) -> Actor:
    if not app[K.READY].is_set():
        raise Refusal.of(P.STORE_UNREACHABLE)
    try:
        actor = app[K.TOKENS].verify(join.get("token")).actor
    except TokenError as exc:
        raise Refusal(exc.code, exc.message, Close.BAD_TOKEN) from None
    wait = app[K.LIMITS].join_per_identity.check(actor.sub)
    if wait:
        raise Refusal.of(P.JOINS_OF_IDENTITY, wait=wait)
    return actor


def _wanted(join: dict[str, Any]) -> tuple[str, str]:
    visit_id, mode = join.get("visit"), join.get("mode", "participant")
    if mode not in MODES:
        raise Refusal.of(P.BAD_MODE)
    if not isinstance(visit_id, str) or not visit_id or len(visit_id) > 64:
        raise Refusal.of(P.BAD_VISIT)
    return visit_id, mode


async def _visit(app: web.Application, visit_id: str) -> Visit:
    visit = await app[K.POLICY].store.get_visit(visit_id)
    if visit is None:
        raise Refusal.of(P.UNKNOWN_VISIT, visit=visit_id)
    return visit


async def _keys(app: web.Application, actor: Actor, visit: Visit, mode: str) -> tuple[str, ...]:
    try:
        return subject_keys(actor, visit=visit, mode=mode)
    except Refusal as refusal:
        if refusal.code == Error.PRIVILEGED:  # SPEC §5: refused, and audited
            data = {"reason": "privileged visit"}
            await app[K.POLICY].audit(actor, "monitor.refused", f"visit:{visit.id}", data)
        raise


async def _ward(app: web.Application, actor: Actor, visit: Visit, mode: str) -> Ward | None:
    """A minor joining: who of their guardians is on the visit (policy/guardian.py). Read
    before the synchronous block. A change of guardians reaches a session in the live-session
    index (signaling/guardians.py); one applied during the reads between here and
    `_register` is taken up by `_current_ward`."""
    if actor.role != "family" or mode != "participant":
        return None
    contact = await app[K.POLICY].store.get_contact(actor.subject_id)
    if contact is None:
        return None
    return ward_of(contact.id, contact.minor, contact.guardians, visit.contacts)


def _current_ward(app: web.Application, ward: Ward | None, mark: int, visit: Visit) -> Ward | None:
    """`ward` as a change of the minor's guardians applied since `mark` made it (synchronous:
    called just before `_register`, which decides with it)."""
    if ward is None:
        return None
    guardians = app[K.GUARDIANS].applied_since(ward.contact, mark)
    if guardians is None:
        return ward
    return ward_of(ward.contact, True, guardians, visit.contacts)


def _joinable(policy: Policy, visit: Visit) -> None:
    """Booked, and open now (not cancelled, not over, not still to come)."""
    if visit.status == "cancelled":
        raise Refusal.of(
            P.VISIT_CANCELLED, why=cancelled_text(visit.cancel_reason, visit.cancel_note)
        )
    now = policy.clock()
    if not visit.booked or now >= visit.ends_at:
        raise Refusal.of(P.VISIT_OVER)
    if not visit.is_open(now, early=policy.rules.visit_early_join_seconds):
        raise Refusal.of(P.NOT_OPEN_YET, starts_at=format_time(visit.starts_at))


def _decide(
    app: web.Application,
    actor: Actor,
    visit: Visit,
    mode: str,
    keys: tuple[str, ...],
    call: Call | None,
    ward: Ward | None,
) -> Directive | None:
    """Policy and capacity: refuse, or return the audio-only directive the session starts
    under (if any). Decided early (a cheap refusal before the awaits that follow) and again
    in `_register`, where it counts. A minor none of whose guardians on the visit may visit
    any more is refused; one whose guardian is not in the call yet is held back there."""
    config, sessions, policy = app[K.CONFIG], app[K.SESSIONS], app[K.POLICY]
    decision = policy.evaluate(keys)
    if decision.blocking is not None:
        notice = app[K.ENFORCER].notice(actor, decision.blocking)
        raise Refusal.of(
            P.SUSPENDED,
            notice=notice,
            expires_at=notice["expires_at"],
            reason=decision.blocking.reason,
        )
    if actor.role == "family" and not policy.approvals.approved(actor.subject_id, visit.inmate):
        raise Refusal.of(P.NOT_APPROVED)
    if ward is not None and not may_wait(
        ward, lambda g: policy.approvals.approved(g, visit.inmate)
    ):
        raise Refusal.of(P.GUARDIAN_REQUIRED)
    if sessions.would_exceed((actor.sub, visit.id, mode), config.max_sessions_per_subject):
        raise Refusal.of(P.TOO_MANY_SESSIONS, limit=config.max_sessions_per_subject)
    if mode == "participant" and call is not None:
        present = call.participants()
        if len(present) >= config.max_participants and not any(
            s.actor.sub == actor.sub for s in present
        ):
            raise Refusal.of(P.VISIT_FULL)
    return decision.audio_only


async def _call(app: web.Application, visit: Visit) -> Call:
    """The visit's call here: placed on this node (or a `Redirect` to where it lives), and new
    calls only while the node has room."""
    sessions = app[K.SESSIONS]
    if visit.id not in sessions.calls:
        _refuse_if_overloaded(app)
        try:
            owner = await app[K.BUS].place(visit)
        except StoreUnavailable:
            raise  # `admit` refuses it: unavailable
        except PolicyError as exc:
            raise Refusal.of(P.STORE_FAILED, cause=exc.message) from None
        if owner is not None:
            raise Redirect(owner)
    call = sessions.calls.get(visit.id)
    if call is None:
        names = await _names(app[K.POLICY], visit)
        recorded = await app[K.RECORDINGS].recorded_at(visit)
        # A concurrent first join may create the call meanwhile: `_register` adopts that one,
        # since two Call objects for one visit would never forward media between them.
        call = sessions.calls.get(visit.id) or Call(
            visit=visit, room=Room(visit.id, codec=app[K.CONFIG].codec), names=names,
            recorded=recorded,
        )  # fmt: skip
    return call


def _refuse_if_overloaded(app: web.Application) -> None:
    """Admission control: a node that is full or falling behind starts no new call.

    A busy event loop delays every packet of every call on the node; past a point, ICE consent
    checks time out and all of its calls drop at once. So before that point, new calls are
    refused with `overloaded` (close 4503: retry, e.g. through the load balancer to another
    node) while the calls already here, their participants and monitors, go on.
    """
    config, sessions, metrics = app[K.CONFIG], app[K.SESSIONS], app[K.METRICS]
    if config.max_calls and len(sessions.calls) >= config.max_calls:
        raise Refusal.of(P.AT_CALL_LIMIT, limit=config.max_calls)
    lag = metrics.mean_loop_lag()
    if lag > config.overload_lag_seconds:
        raise Refusal.of(P.LOOP_LATE, lag_ms=lag * 1000)


async def _names(policy: Policy, visit: Visit) -> dict[str, str]:
    names = {}
    inmate = await policy.store.get_inmate(visit.inmate)
    names[f"device:{visit.device}"] = inmate.name if inmate else visit.inmate
    for contact_id in visit.contacts:
        contact = await policy.store.get_contact(contact_id)
        names[f"contact:{contact_id}"] = contact.name if contact else contact_id
    return names


def _register(
    app: web.Application, ws: web.WebSocketResponse, actor: Actor, visit: Visit, mode: str,
    keys: tuple[str, ...], call: Call, ward: Ward | None,
) -> tuple[Session, Session | None]:  # fmt: skip
    """Block A of the module's docstring: decide and register, with no `await` in between.

    Returns the provisional session, with the write of its start record begun, and the older
    session of the same identity it replaces (if any)."""
    config, policy, sessions = app[K.CONFIG], app[K.POLICY], app[K.SESSIONS]
    call = sessions.calls.get(visit.id) or call
    read = call.visit if call.visit.version > visit.version else visit
    latest = policy.visit_changes.current(read)
    if latest.version > visit.version:  # changed since it was read: cancelled, moved, its kind
        _joinable(policy, latest)
        keys = subject_keys(actor, visit=latest, mode=mode)  # a move to another kiosk, say
        visit = latest
    if call.visit.version < visit.version:
        call.visit = visit
    audio_only = _decide(app, actor, visit, mode, keys, call, ward)
    session_id = f"S-{secrets.token_hex(6)}"
    record = SessionRecord(
        id=session_id, visit=visit.id, sub=actor.sub, role=actor.role, mode=mode,
        node=config.node_id, keys=keys, started_at=policy.clock(),
    )  # fmt: skip
    peer = RelayPeer(
        session_id, codec=config.codec, ice_servers=config.ice_servers, publish=mode == "participant",
        totals=app[K.METRICS].relay, certificate=app[K.DTLS_CERTIFICATE],
    )  # fmt: skip
    session = Session(
        id=session_id, visit=visit, actor=actor, mode=mode, keys=keys,
        name=call.names.get(actor.sub, actor.sub), ws=ws, peer=peer, record=record, ward=ward,
    )  # fmt: skip
    if audio_only is not None:
        app[K.ENFORCER].restrict(session, audio_only)
    starts = visit.id not in sessions.calls
    replaced = sessions.add(session, call)
    if starts:  # the call starts here and now: its recording too, before anyone's media
        app[K.RECORDINGS].begin(call)
    session.started = asyncio.ensure_future(policy.session_started(record))
    if ward is not None:  # with a guardian in the call, or held back until one joins
        app[K.ENFORCER].place_ward(session, sessions.calls[visit.id])
    return session, replaced


async def _welcome(app: web.Application, session: Session, replaced: Session | None) -> Admission:
    """Record the start, replace the older session, tell everyone: checking after each
    `await` that the session was not ended meanwhile (see the module's docstring)."""
    enforcer = app[K.ENFORCER]
    try:
        assert session.started is not None
        try:
            await session.started
        except (PolicyError, OSError) as exc:
            await enforcer.end_session(session, Reason.ERROR, Close.UNAVAILABLE)
            if isinstance(exc, PolicyError) and not isinstance(exc, StoreUnavailable):
                raise Refusal.of(P.STORE_FAILED, cause=exc.message) from None
            log.warning("join refused: store unavailable: %s", getattr(exc, "message", exc))
            raise Refusal.of(P.STORE_UNREACHABLE) from None
        _check(app, session)
        if replaced is not None:
            await enforcer.end_session(replaced, Reason.REPLACED, Close.REPLACED, detach=True)
            _check(app, session)
    except Refusal:
        raise
    except Exception:
        await enforcer.end_session(session, Reason.ERROR, Close.INTERNAL_ERROR)
        raise
    # From here the session is joined: whoever ends it now tells it `terminated`.
    session.joined = True
    visit, config = session.visit, app[K.CONFIG]
    call = app[K.SESSIONS].calls.get(visit.id)
    if call is not None:
        enforcer.reconsider(call)  # a guardian now in the call lets their minors in
    others = (
        [s.public() for s in call.joined() if s is not session and not s.monitor] if call else []
    )
    await session.send(
        {
            "type": Message.JOINED,
            "session": session.id,
            "visit": visit.id,
            "role": session.role,
            "mode": session.mode,
            "kind": visit.kind,
            "ends_at": format_time(visit.ends_at),
            "ice_servers": config.ice_servers,
            "participants": others,
            "monitored": visit.monitored,
            "recorded": call is not None and call.recording is not None,
            "codec": config.codec,
            "audio_only": session.audio_only is not None,
            "hold": enforcer.hold_frame(session),
        }
    )
    left = max(0, int(visit.ends_at - app[K.POLICY].clock()))
    await session.send({"type": Message.TIME_REMAINING, "seconds": left})
    app[K.METRICS].joins.labels(session.role, session.mode).inc()
    if not session.monitor and not session.ended and call is not None:
        session.announced = True
        joined = {"type": Message.PARTICIPANT_JOINED, "participant": session.public()}
        await asyncio.gather(*(s.send(joined) for s in call.joined() if s is not session))
    return Admission(session)


def _check(app: web.Application, session: Session) -> None:
    """After an `await`: a provisional session ended meanwhile is refused, saying why."""
    ending = session.ending
    if ending is not None:
        raise _refusal_after(app, session, ending)


def _refusal_after(app: web.Application, session: Session, ending: Ending) -> Refusal:
    directive = ending.directive
    if directive is not None:
        notice = app[K.ENFORCER].notice(session.actor, directive)
        if directive.action == "suspend":
            return Refusal.of(
                P.SUSPENDED, notice=notice, expires_at=notice["expires_at"], reason=directive.reason
            )
        return Refusal(Error.ENDED, ending.message, ending.code, notice)
    if ending.reason == Reason.APPROVAL_WITHDRAWN and ending.code == Close.REFUSED:
        return Refusal.of(P.NOT_APPROVED)  # halted by signaling/approvals.py
    visit = app[K.POLICY].visit_changes.current(session.visit)
    if visit.status == "cancelled":  # halted by signaling/visits.py
        return Refusal.of(
            P.VISIT_CANCELLED, why=cancelled_text(visit.cancel_reason, visit.cancel_note)
        )
    if ending.reason == Reason.REPLACED:
        return Refusal(Error.REPLACED, ending.message, ending.code)
    if ending.reason == Reason.VISIT_ENDED:
        return Refusal(Error.VISIT_OVER, ending.message, ending.code)
    return Refusal(Error.ENDED, ending.message, ending.code)
