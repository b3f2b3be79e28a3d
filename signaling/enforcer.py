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
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from policy.actor import Actor
from policy.directive import Directive
from policy.errors import PolicyError, StoreUnavailable
from policy.service import Policy
from relay import RelayPeer
from signaling.background import Background
from signaling.backlog import Backlog
from signaling.metrics import Metrics
from signaling.protocol import Close, Error, Message, Reason, directive_reason, ended_text
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
        call = self.sessions.remove(session)
        if call is not None and not call.sessions and self.recordings is not None:
            self.recordings.end(call)  # the call is over: its recording is finished
        renegotiate = call.room.remove(session.peer) if call is not None else []
        told = call.joined() if call is not None and session.announced else []
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
        for peer in halted.renegotiate:
            other = call.session_of(peer)
            if other is not None:
                await self.renegotiate(other)

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

    async def renegotiate(self, session: Session) -> None:
        """Send a session a server offer; a failure ends that session alone, never the caller's."""
        try:
            async with session.lock:
                await session.renegotiate()
        except Exception:
            log.exception("renegotiation of session %s failed", session.id)
            await self.end_session(session, Reason.ERROR, Close.INTERNAL_ERROR)
