"""The enforcer: turns policy decisions into ended or restricted live sessions.

`end_session` is the one way a session ends, whatever the reason. `apply` is what happens
to live calls when a directive is issued: the matching sessions are found through the
subject-key index, their forwarding is stopped synchronously (no media flows past this
point), then each is told why and its end recorded; that is when the directive's answer goes
out. The close handshakes, the peer connections' teardown and the renegotiation of those who
stay in the call go on after it (a busy client's close frame must not hold up the operator).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from policy.actor import Actor
from policy.directive import Directive
from policy.rfc3339 import format_time
from policy.service import Policy
from signaling.background import Background
from signaling.metrics import Metrics
from signaling.registry import Call, LiveSessions
from signaling.session import Session
from signaling.tokens import Tokens

log = logging.getLogger("parlor.enforcer")

# WebSocket close codes (SPEC §5)
NORMAL = 1000
PROTOCOL_ERROR = 4400
BAD_TOKEN = 4401
REFUSED = 4403
REPLACED = 4409
VISIT_OVER = 4410
TOO_LARGE = 4413
RATE_LIMITED = 4429
MEDIA_FAILED = 4502
UNAVAILABLE = 4503

APPEAL_GRACE_SECONDS = 30 * 86400  # an appeal may be filed up to 30 days after the directive ends

MESSAGES = {
    "left": "You left the call.",
    "visit-ended": "The visit's time is over.",
    "replaced": "You joined this call from another window or device.",
    "error": "The call ended because of an error.",
}


@dataclass
class Enforcer:
    sessions: LiveSessions
    policy: Policy
    appeal_base: str = ""
    metrics: Metrics = field(default_factory=Metrics)
    tokens: Tokens | None = None  # mints the appeal tokens carried in family notices
    applied: set[str] = field(default_factory=set)  # directives already enforced on this node
    closing: Background = field(default_factory=Background)  # detached closes running

    async def apply(self, directive: Directive) -> list[str]:
        """Enforce a directive in force on this node's live sessions; return the ended ids.

        A directive that starts later is applied by the scheduler when it starts; one
        already applied here (e.g. seen again on the cluster bus) is not applied twice.
        """
        started = time.perf_counter()
        matching = self.stop(directive)
        return await self.complete(directive, matching, started) if matching else []

    def stop(self, directive: Directive) -> list[Session]:
        """The synchronous half of `apply`: no media flows to or from a matching session (or,
        for audio-only, no video) once this returns. Returns the sessions `complete` finishes."""
        if directive.id in self.applied or not directive.in_force(self.policy.clock()):
            return []
        self.applied.add(directive.id)
        matching = [s for s in self.sessions.matching(directive.scope) if not s.ended]
        for session in matching:  # media stops for every affected session before anyone is told
            if directive.action == "audio-only":
                self.restrict(session, directive)
            else:
                session.peer.stop_forwarding()
        return matching

    async def complete(
        self, directive: Directive, matching: list[Session], started: float | None = None
    ) -> list[str]:
        """The rest of `apply`: tell the restricted, or end (tell and record) the stopped;
        return the ended ids."""
        if directive.action == "audio-only":
            await asyncio.gather(*(self._tell_restricted(s, directive) for s in matching))
            return []
        await asyncio.gather(
            *(
                self.end_session(
                    session, f"directive:{directive.id}", REFUSED, directive=directive, detach=True
                )
                for session in matching
            )
        )
        if matching and started is not None:
            self.metrics.kill_seconds.observe(time.perf_counter() - started)
        return [s.id for s in matching]

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
        await session.send(
            {"type": "restricted", "action": "audio-only", "directive": self.notice(session.actor, directive)}
        )

    async def released(self, directive: Directive) -> None:
        """A directive stopped being in force (lifted, expired, lapsed): undo audio-only."""
        if directive.status != "active":
            self.applied.discard(directive.id)
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
            await session.send({"type": "restricted", "action": "none", "directive": directive.notice(appeal_base=self.appeal_base)})

    async def end_session(
        self,
        session: Session,
        reason: str,
        code: int,
        *,
        directive: Directive | None = None,
        message: str | None = None,
        detach: bool = False,
    ) -> None:
        """End one session: stop its media, tell it why, close it, record the end reason.

        `detach`: return once the session is told and its end recorded, and leave the close
        handshake, the peer connection's teardown and the others' renegotiation to run on
        (`self.closing`). A directive's answer need not wait for a busy client's close frame.
        """
        if session.ended:
            return
        session.ended = True
        session.peer.stop_forwarding()
        call = self.sessions.remove(session)
        renegotiate = call.room.remove(session.peer) if call is not None else []
        # The record is written while the (possibly slow) close handshakes run, so a client that
        # never answers its close frame cannot keep the session listed as live.
        recorded = asyncio.ensure_future(self._record_end(session, reason))
        if reason == "media-failed":
            # Not final: the client may try again (SPEC §5, 4502), so an error, not `terminated`.
            await session.send({"type": "error", "code": "media-failed", "message": message or "media failed"})
        elif reason != "left":
            terminated: dict[str, Any] = {
                "type": "terminated",
                "reason": reason,
                "message": message or self._message(reason, directive),
            }
            if directive is not None:
                terminated["directive"] = self.notice(session.actor, directive)
            await session.send(terminated)
        closing = self._close(session, code, reason, call, renegotiate)
        if detach:
            self.closing.spawn(closing)
        else:
            await closing
        await recorded

    async def _close(
        self, session: Session, code: int, reason: str, call: Call | None, renegotiate: list[Any]
    ) -> None:
        try:
            await session.ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            pass
        await session.peer.close()
        if call is not None:
            if not session.monitor:
                left = {"type": "participant-left", "participant": session.id}
                await asyncio.gather(*(s.send(left) for s in call.sessions if not s.ended))
            for peer in renegotiate:
                other = call.session_of(peer)
                if other is not None:
                    await self.renegotiate(other)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a while) for the detached closes still running: before shutting down."""
        await self.closing.drain(timeout)

    async def _record_end(self, session: Session, reason: str) -> None:
        try:
            await self.policy.session_ended(session.record, reason)
        except Exception:  # the session is over either way; the orphan sweep closes the record
            log.exception("could not record the end of session %s", session.id)

    async def renegotiate(self, session: Session) -> None:
        """Send a session a server offer; a failure ends that session alone, never the caller's."""
        try:
            async with session.lock:
                await session.renegotiate()
        except Exception:
            log.exception("renegotiation of session %s failed", session.id)
            await self.end_session(session, "error", 1011)

    def _message(self, reason: str, directive: Directive | None) -> str:
        if directive is not None:
            return (
                f"This call was stopped by facility staff ({directive.action}) until "
                f"{format_time(directive.expires_at)}. Reason: {directive.reason}. "
                f"Legal basis: {directive.legal_basis}."
            )
        if reason.startswith("operator:"):
            return "Facility staff ended this call."
        return MESSAGES.get(reason, "The call ended.")
