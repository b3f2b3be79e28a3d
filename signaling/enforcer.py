"""The enforcer: turns policy decisions into ended or restricted live sessions.

`end_session` is the one way a session ends, whatever the reason. It has two halves:
`halt`, synchronous, after which the session is ended for everyone (no media flows, it is out
of the live-session index, its admission can no longer complete), and `finish`, which tells
the person, closes the connection and records the end.

`stop` and `complete` are what a directive does to the live sessions it matches
(signaling/directives.py decides when): `stop` halts (or, for audio-only, restricts) every
matching session synchronously — no media flows past this point — and `complete` tells each
one why and records its end; that is when the directive's answer goes out. The close
handshakes, the peer connections' teardown and the renegotiation of those who stay in the
call go on after it (a busy client's close frame must not hold up the operator).

A minor is held back the same way, reversibly: `place_ward` (admission's synchronous block)
and `reconsider` (whenever someone joins or leaves a call) step each minor's session by
policy/guardian.py's rules and open or close its packet gates at once (`RelayPeer.hold`);
telling the minor and the others and writing the audit event follow (`_tell_ward`). A paused
minor's session ends with `guardian-left` when its grace runs out (`_grace_over`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from policy import guardian
from policy.actor import SYSTEM, Actor
from policy.directive import Directive
from policy.errors import PolicyError, StoreUnavailable
from policy.rfc3339 import format_time
from policy.service import Policy
from relay import RelayPeer
from signaling.background import Background
from signaling.backlog import Backlog
from signaling.metrics import Metrics
from signaling.protocol import (
    HOLD_REASONS,
    Close,
    Error,
    Message,
    Reason,
    directive_reason,
    ended_text,
    hold_text,
)
from signaling.recordings import Recordings
from signaling.registry import Call, LiveSessions
from signaling.session import Ending, Session
from signaling.tokens import Tokens

log = logging.getLogger("parlor.enforcer")

APPEAL_GRACE_SECONDS = 30 * 86400  # an appeal may be filed up to 30 days after the directive ends


@dataclass
class Halted:
    """A session `halt` ended, and what `finish` still owes the others in its call."""

    session: Session
    call: Call | None
    renegotiate: list[RelayPeer]  # the peers that subscribed to it
    told: list[Session]  # who hears `participant-left`: the joined ones when it ended


@dataclass
class Stopped:
    """What `Enforcer.stop` (or `halt_matching`) did, for `Enforcer.complete` to finish."""

    directive: Directive | None  # the directive enforced, if a directive it was
    started: float  # time.perf_counter() when it began: the kill's clock
    halted: list[Halted] = field(default_factory=list)  # ended (suspend, end)
    restricted: list[Session] = field(default_factory=list)  # audio-only

    def __bool__(self) -> bool:
        return bool(self.halted or self.restricted)


@dataclass
class Enforcer:
    sessions: LiveSessions
    policy: Policy
    appeal_base: str = ""
    metrics: Metrics = field(default_factory=Metrics)
    tokens: Tokens | None = None  # mints the appeal tokens carried in family notices
    closing: Background = field(default_factory=Background)  # detached closes running
    completing: Background = field(default_factory=Background)  # see `complete_later`
    backlog: Backlog = field(default_factory=Backlog)  # records the store could not take yet
    recordings: Recordings | None = None  # told when a call's last session ends
    guardian_grace_seconds: float = guardian.DEFAULT_GRACE_SECONDS  # a paused minor's grace

    # -- a directive on the live sessions it matches ----------------------------------------
    def stop(self, directive: Directive) -> Stopped:
        """The synchronous half of enforcing a directive: once this returns, no media flows to
        or from a matching session (for audio-only: no video), and every matching session,
        provisional ones included, is ended (or restricted). `complete` does the rest."""
        if directive.action != "audio-only":
            return self.halt_matching(
                directive.scope, directive_reason(directive), directive=directive
            )
        stopped = Stopped(directive, started=time.perf_counter())
        for session in self.sessions.matching(directive.scope):
            self.restrict(session, directive)
            stopped.restricted.append(session)
        return stopped

    def halt_matching(
        self,
        scope: str,
        reason: str,
        *,
        directive: Directive | None = None,
        code: int = Close.REFUSED,
        message: str | None = None,
    ) -> Stopped:
        """Halt every live session `scope` matches (close `code`, end reason `reason`, telling
        `message`): what a directive that ends sessions does, and what any policy change that
        no longer admits them does (an approval withdrawn, `pair:I:C`; a visit cancelled,
        `visit:V`). Synchronous, like `stop`."""
        stopped = Stopped(directive, started=time.perf_counter())
        for session in self.sessions.matching(scope):
            halted = self.halt(session, reason, code, directive=directive, message=message)
            if halted is not None:
                stopped.halted.append(halted)
        return stopped

    async def complete(self, stopped: Stopped) -> list[str]:
        """Tell the restricted, or tell and record the ended; return the ids of the ended
        sessions whose start had been recorded (what the directive counts)."""
        directive = stopped.directive
        if directive is not None:
            await asyncio.gather(*(self._tell_restricted(s, directive) for s in stopped.restricted))
        recorded = await asyncio.gather(*(self.finish(h, detach=True) for h in stopped.halted))
        if stopped.halted:
            self.metrics.kill_seconds.observe(time.perf_counter() - stopped.started)
        return [
            h.session.id for h, counted in zip(stopped.halted, recorded, strict=True) if counted
        ]

    def complete_later(self, stopped: Stopped) -> None:
        """`complete` in the background: what another node's policy change (heard on the bus)
        halted here is told and recorded while the next event is handled. (A directive's
        count is signaling/directives.py's own.)"""
        self.completing.spawn(self._complete_quietly(stopped))

    async def _complete_quietly(self, stopped: Stopped) -> None:
        try:
            await self.complete(stopped)
        except PolicyError as exc:  # the sessions are ended either way; the records catch up
            log.warning("could not record the end of sessions halted here: %s", exc)

    def notice(self, actor: Actor, directive: Directive) -> dict[str, Any]:
        """What an affected person is told. A family member's appeal link carries a token of
        their own (in the fragment, never logged) that outlives the visit: appeals are often
        filed days later, when the join token has long expired."""
        notice = directive.notice(appeal_base=self.appeal_base)
        if actor.role == "family" and actor.visit is not None and self.tokens is not None:
            ttl = directive.expires_at - self.policy.clock() + APPEAL_GRACE_SECONDS
            token = self.tokens.issue(actor.sub, "family", max(ttl, 3600), visit=actor.visit)
            notice["appeal_url"] += f"#token={token}"
        return notice

    def restrict(self, session: Session, directive: Directive) -> None:
        session.audio_only = directive
        session.peer.set_video(False)

    async def _tell_restricted(self, session: Session, directive: Directive) -> None:
        if session.joined:  # a provisional session learns it in its `joined` (`audio_only`)
            notice = self.notice(session.actor, directive)
            await session.send(
                {"type": Message.RESTRICTED, "action": "audio-only", "directive": notice}
            )

    async def unrestrict(self, directive: Directive) -> None:
        """An audio-only directive stopped being in force: video resumes where no other
        audio-only directive still applies."""
        if directive.action != "audio-only":
            return
        for session in self.sessions.matching(directive.scope):
            if session.ended or session.audio_only is None or session.audio_only.id != directive.id:
                continue
            still = self.policy.evaluate(session.keys).audio_only
            if still is not None:
                session.audio_only = still
                continue
            session.audio_only = None
            session.peer.set_video(True)
            if session.joined:
                notice = directive.notice(appeal_base=self.appeal_base)
                await session.send(
                    {"type": Message.RESTRICTED, "action": "none", "directive": notice}
                )

    # -- ending one session ---------------------------------------------------------------
    async def end_session(
        self,
        session: Session,
        reason: str,
        code: int,
        *,
        directive: Directive | None = None,
        message: str | None = None,
        detach: bool = False,
    ) -> bool:
        """End one session: stop its media, tell it why, close it, record the end reason.
        Returns whether its start had been recorded (and so its end is, too).

        `detach`: return once the session is told and its end recorded, and leave the close
        handshake, the peer connection's teardown and the others' renegotiation to run on
        (`self.closing`). A directive's answer need not wait for a busy client's close frame.
        """
        halted = self.halt(session, reason, code, directive=directive, message=message)
        if halted is None:
            return False
        return await self.finish(halted, detach=detach)

    def halt(
        self,
        session: Session,
        reason: str,
        code: int,
        *,
        directive: Directive | None = None,
        message: str | None = None,
    ) -> Halted | None:
        """The synchronous half of `end_session` (None: it had ended already). From here the
        session is ended for everyone: no media flows, nothing finds it in the live-session
        index, and if it was still provisional its admission refuses it."""
        if session.ended:
            return None
        session.ended = True
        session.ending = Ending(reason, code, message or ended_text(reason, directive), directive)
        session.peer.stop_forwarding()
        if session.grace is not None:
            session.grace.cancel()
        call = self.sessions.remove(session)
        if call is not None and not call.sessions and self.recordings is not None:
            self.recordings.end(call)  # the call is over: its recording is finished
        renegotiate = call.room.remove(session.peer) if call is not None else []
        told = call.joined() if call is not None and session.announced else []
        if call is not None and call.sessions:
            self.reconsider(call)  # a guardian leaving pauses their minors, now
        return Halted(session, call, renegotiate, told)

    async def finish(self, halted: Halted, *, detach: bool = False) -> bool:
        """The rest of `end_session`: tell, close, record (see there)."""
        session = halted.session
        ending = session.ending
        assert ending is not None
        # The record is written while the (possibly slow) close handshakes run, so a client that
        # never answers its close frame cannot keep the session listed as live.
        recorded = asyncio.ensure_future(self._record_end(session, ending.reason))
        if not session.joined:  # provisional: its admission sends the refusal and closes the socket
            closing = session.peer.close()
        else:
            if ending.reason == Reason.MEDIA_FAILED:
                # Not final: the client may try again (SPEC §5, 4502), so an error, not `terminated`.
                await session.send(
                    {"type": Message.ERROR, "code": Error.MEDIA_FAILED, "message": ending.message}
                )
            elif ending.reason != Reason.LEFT:  # who left knows why
                terminated: dict[str, Any] = {
                    "type": Message.TERMINATED,
                    "reason": ending.reason,
                    "message": ending.message,
                }
                if ending.directive is not None:
                    terminated["directive"] = self.notice(session.actor, ending.directive)
                await session.send(terminated)
            closing = self._close(halted, ending)
        if detach:
            self.closing.spawn(closing)
        else:
            await closing
        return await recorded

    async def _close(self, halted: Halted, ending: Ending) -> None:
        session, call = halted.session, halted.call
        try:
            await session.ws.close(code=ending.code, message=ending.reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            pass
        await session.peer.close()
        if call is None:
            return
        if not session.monitor:
            left = {"type": Message.PARTICIPANT_LEFT, "participant": session.id}
            await asyncio.gather(*(s.send(left) for s in halted.told if not s.ended))
        await self.renegotiate_peers(call, halted.renegotiate)

    # -- minors and their guardians (policy/guardian.py) -----------------------------------
    def place_ward(self, session: Session, call: Call) -> None:
        """The first state of a minor's session, in admission's synchronous block: with a
        guardian of theirs in the call, or waiting (no media either way) until one joins."""
        self._enter(session, guardian.first(self._guardian_present(session, call)))

    def reconsider(self, call: Call) -> None:
        """Someone joined or left `call`: step each minor of it (synchronous: a minor whose
        last guardian left has no media from here on)."""
        for session in list(call.sessions):
            if session.ward is None or session.ended:
                continue
            step = guardian.step(session.guardian_state, self._guardian_present(session, call))
            if step.change is not None:
                self._enter(session, step)

    def rename_guardians(self, session: Session, ward: guardian.Ward, call: Call) -> None:
        """A minor's guardians changed (signaling/guardians.py): step them by the new ones,
        and tell them the new names even when their state stays the same."""
        session.ward = ward
        step = guardian.step(session.guardian_state, self._guardian_present(session, call))
        if step.change is not None:
            self._enter(session, step)
        else:
            self._news(session, step)

    def _guardian_present(self, session: Session, call: Call) -> bool:
        """Is a guardian of this minor in the call: joined and live, with no directive blocking
        them and their approval for the inmate standing (a suspended guardian lets nobody in)?"""
        assert session.ward is not None
        inmate = session.visit.inmate
        in_call = {
            s.actor.subject_id: s
            for s in call.joined()
            if s.role == "family" and not s.monitor and s is not session
        }

        def eligible(contact: str) -> bool:
            keys = in_call[contact].keys
            blocked = self.policy.evaluate(keys).blocking is not None
            return not blocked and self.policy.approvals.approved(contact, inmate)

        return bool(guardian.present(session.ward, in_call, eligible))

    def _enter(self, session: Session, step: guardian.Step) -> None:
        """Put a minor's session in `step.state`: its media gates at once, its grace timer, and
        then (in the background, in order) the telling and the audit event."""
        session.guardian_state = step.state
        session.peer.hold(step.state != guardian.ACTIVE)
        if session.grace is not None:
            session.grace.cancel()
            session.grace = None
        if step.state == guardian.PAUSED:
            session.paused_at = self.policy.clock()
            loop = asyncio.get_running_loop()
            session.grace = loop.call_later(self.guardian_grace_seconds, self._grace_over, session)
        else:
            session.paused_at = None
        self._news(session, step)

    def _news(self, session: Session, step: guardian.Step) -> None:
        """Tell and record `step` in the background, after the news before it."""
        previous = session.guardian_news
        session.guardian_news = self.completing.spawn(self._tell_ward(session, step, previous))

    def hold_frame(self, session: Session) -> dict[str, Any] | None:
        """What a minor is told of their state (`hold`, and `joined.hold`); None: not a minor."""
        if session.ward is None:
            return None
        call = self.sessions.calls.get(session.visit.id)
        names = call.names if call is not None else {}
        guardians = [names.get(f"contact:{g}", g) for g in session.ward.guardians]
        state = session.guardian_state
        frame: dict[str, Any] = {
            "state": state, "reason": HOLD_REASONS.get(state), "guardians": guardians,
        }  # fmt: skip
        if state == guardian.PAUSED and session.paused_at is not None:
            ends_at = session.paused_at + self.guardian_grace_seconds
            ends_in = guardian.grace_left(
                session.paused_at, self.policy.clock(), self.guardian_grace_seconds
            )
            frame.update(ends_in=round(ends_in), ends_at=format_time(ends_at))
        frame["message"] = hold_text(state, guardians, frame.get("ends_in"))
        return frame

    async def _tell_ward(
        self, session: Session, step: guardian.Step, previous: asyncio.Future[None] | None
    ) -> None:
        """Tell the minor and the others in the call, and record the change (after the ones
        before it, and after the session's start record)."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        if session.joined and not session.ended:
            frame = self.hold_frame(session)
            assert frame is not None
            await session.send({"type": Message.HOLD, **frame})
            call = self.sessions.calls.get(session.visit.id)
            if call is not None and session.announced:
                news = {"type": Message.PARTICIPANT_STATE, "participant": session.public()}
                await asyncio.gather(*(s.send(news) for s in call.joined() if s is not session))
        if step.change is None or not await session.start_recorded():
            return  # nothing changed to record (new names only), or nothing recorded at all
        assert session.ward is not None
        data = {
            "session": session.id, "visit": session.visit.id, "contact": session.ward.contact,
            "state": step.state, "guardians": list(session.ward.guardians),
        }  # fmt: skip
        if step.state == guardian.PAUSED:
            data["grace_seconds"] = self.guardian_grace_seconds
        action, subject = f"minor.{step.change}", f"contact:{session.ward.contact}"
        try:
            await self.policy.audit(SYSTEM, action, subject, data)
        except StoreUnavailable as exc:  # it happened: the record is written later
            self.backlog.add(
                f"{action} of session {session.id} at {self.policy.clock()}",
                lambda: self.policy.audit(SYSTEM, action, subject, data),
                exc,
            )
        except PolicyError as exc:
            log.warning("could not record %s of session %s: %s", action, session.id, exc)

    def _grace_over(self, session: Session) -> None:
        """A paused minor's grace ran out with no guardian back: the session ends."""
        session.grace = None
        if session.ended or session.guardian_state != guardian.PAUSED:
            return
        self.completing.spawn(self.end_session(session, Reason.GUARDIAN_LEFT, Close.REFUSED))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a while) for the detached closes and completions still running: before
        shutting down."""
        await self.completing.drain(timeout)
        await self.closing.drain(timeout)

    async def _record_end(self, session: Session, reason: str) -> bool:
        if not await session.start_recorded():
            return False  # never recorded as started: nothing to close
        record, ended_at = session.record, self.policy.clock()
        try:
            await self.policy.session_ended(record, reason, ended_at=ended_at)
        except StoreUnavailable as exc:  # the session is over: its record is written later
            self.backlog.add(
                f"the end of session {session.id}",
                lambda: self.policy.session_ended(record, reason, ended_at=ended_at),
                exc,
            )
        except Exception:  # the session is over either way; the orphan sweep closes the record
            log.exception("could not record the end of session %s", session.id)
        return True

    async def renegotiate_peers(self, call: Call, peers: list[RelayPeer]) -> None:
        """Renegotiate, in turn, the sessions of ``call`` whose ``peers`` `Room.add` or
        `Room.remove` named (each is sent an offer only if it needs one)."""
        for peer in peers:
            session = call.session_of(peer)
            if session is not None:
                await self.renegotiate(session)

    async def renegotiate(self, session: Session) -> None:
        """Send a session a server offer; a failure ends that session alone, never the caller's."""
        try:
            async with session.lock:
                await session.renegotiate()
        except Exception:
            log.exception("renegotiation of session %s failed", session.id)
            await self.end_session(session, Reason.ERROR, Close.INTERNAL_ERROR)
