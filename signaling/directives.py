"""A directive's life on this node, in one place (SPEC §4): issue, the start of one issued to
start later, lift, confirmation, appeal, expiry and lapse, and the events of other nodes.

The REST API, the scheduler and the cluster bus call `Directives` and nothing else. Follow
`issue` to read what happens when a directive is issued:

1. commit: `Policy.issue` validates it and commits it with its audit event (durable before
   anyone hears of it);
2. stop (synchronous, no `await`): the directive goes into the in-memory index, and every
   matching live session is halted, provisional ones included (`Enforcer.stop`): no media
   flows, and an admission still in flight is refused (the argument is in
   signaling/admission.py);
3. complete: each ended session is told why and its end recorded (`Enforcer.complete`);
4. count: the number of ended sessions is added to the directive (`Policy.record_enforcement`),
   and the API answers.

Another node runs steps 2–4 when the bus delivers the directive (`heard`); the scheduler runs
them when a directive issued to start later starts (`tick`). A request (a broad directive
`pending` a second supervisor, policy/service.py `Policy.issue`) is in force nowhere: steps 2–4
run when it is confirmed (`confirm`, and `heard` of the confirmation on the other nodes). `stopped` is the one guard that
makes this idempotent: a directive is stopped at most once per node, however often it is
seen. When a directive stops being in force (lifted, expired, lapsed), `release` undoes what
it still holds (audio-only) and forgets it.

Another policy change that no longer admits live sessions (an approval withdrawn, say) takes
the same steps: commit, then in one synchronous block update what admission evaluates and
halt what it matches (`Enforcer.halt_matching`), then `Enforcer.complete`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from policy.actor import SYSTEM, Actor
from policy.appeal import Appeal
from policy.audit import AuditEvent
from policy.directive import Directive
from policy.errors import PolicyError, StoreUnavailable
from policy.service import Policy
from signaling.background import Background
from signaling.enforcer import Enforcer, Stopped
from signaling.metrics import Metrics
from signaling.protocol import STAFF_ENDED, Close, Reason

log = logging.getLogger("parlor.directives")

ISSUED = "directive.issued"
CHANGED = ("directive.lifted", "directive.expired", "directive.lapsed", "directive.confirmed")
SESSION_END_REQUESTED = (
    "session.end-requested"  # written by POST /sessions/{id}/end for another node
)
STATE_ACCEPTED = "store.state-accepted"  # a node restored rows to the audit chain's values


@dataclass(frozen=True)
class Issued:
    """A directive as its issuing answer reports it, and where the time went (seconds)."""

    directive: Directive
    commit: float
    enforce: float
    record: float


@dataclass
class Directives:
    policy: Policy
    enforcer: Enforcer
    node_id: str
    metrics: Metrics = field(default_factory=Metrics)
    stopped: set[str] = field(default_factory=set)  # the guard: directives stopped on this node
    background: Background = field(default_factory=Background)  # other nodes' kills being counted
    live_at_loss: set[str] = field(default_factory=set, init=False)  # see `cut_off`

    # -- the REST API ---------------------------------------------------------------------
    async def issue(self, actor: Actor, body: object) -> Issued:
        """Commit, stop, complete, count: the directive's answer is ready when this returns."""
        started = time.perf_counter()
        directive = await self.policy.issue(actor, body)  # 1. commit
        committed = time.perf_counter()
        self.metrics.directives.labels(directive.action, directive.scope.split(":", 1)[0]).inc()
        stopped = self._learn_and_stop(directive)  # 2. stop
        ended = await self.enforcer.complete(stopped) if stopped else []  # 3. complete
        enforced = time.perf_counter()
        if ended:  # 4. count
            directive = await self._count(actor, directive, ended)
        recorded = time.perf_counter()
        return Issued(directive, committed - started, enforced - committed, recorded - enforced)

    async def lift(self, actor: Actor, directive_id: str, body: object) -> Directive:
        lifted = await self.policy.lift(actor, directive_id, body)
        await self.release(lifted)
        return lifted

    async def confirm(self, actor: Actor, directive_id: str) -> Directive:
        """A confirmed request starts now: stopped and completed here before the answer,
        exactly as a new directive (steps 2–4); confirming an active one changes nothing
        live (the guard: it was stopped when issued)."""
        confirmed = await self.policy.confirm(actor, directive_id)  # 1. commit (and index)
        stopped = self._stop(confirmed)  # 2. stop, in the same synchronous block
        return await self._complete(actor, confirmed, stopped) if stopped else confirmed

    async def decide_appeal(self, actor: Actor, appeal_id: str, body: object) -> Appeal:
        appeal, lifted = await self.policy.decide_appeal(actor, appeal_id, body)
        if lifted is not None:
            await self.release(lifted)
        return appeal

    # -- the clock ------------------------------------------------------------------------
    async def close_due(self) -> None:
        """Expire the directives past `expires_at`, lapse the broad ones left unconfirmed."""
        for directive in await self.policy.close_due():
            await self.release(directive)

    async def start_due(self) -> None:
        """Directives issued to start later begin on time (the guard skips the rest)."""
        for directive in self.policy.index.active():
            if self.policy.index.by_id.get(directive.id) is not directive:
                continue  # changed while an earlier one was being completed: its state is newer
            stopped = self._stop(directive)
            if stopped:
                await self._complete(SYSTEM, directive, stopped)

    # -- one directive on this node's live sessions -----------------------------------------
    def _learn_and_stop(self, directive: Directive) -> Stopped | None:
        """Step 2, one synchronous block (admission.py's block D): into the index, then halt.
        A copy older than what the index knows (lifted or confirmed here meanwhile) does
        nothing: a directive's state only moves forward (`DirectiveIndex.put`)."""
        if not self.policy.learn(directive):
            return None
        return self._stop(directive)

    def _stop(self, directive: Directive) -> Stopped | None:
        """Halt (or restrict) what `directive` matches here, once it is in force and unless it
        was stopped here already (the one guard); None when there was nothing to do."""
        if directive.id in self.stopped or not directive.in_force(self.policy.clock()):
            return None
        self.stopped.add(directive.id)
        return self.enforcer.stop(directive)

    async def _complete(
        self, actor: Actor, directive: Directive, stopped: Stopped, *, node: str | None = None
    ) -> Directive:
        """Steps 3 and 4."""
        ended = await self.enforcer.complete(stopped)
        if not ended:
            return directive
        return await self._count(actor, directive, ended, node=node)

    async def _count(
        self, actor: Actor, directive: Directive, ended: list[str], *, node: str | None = None
    ) -> Directive:
        """Add the sessions ended here to the directive's count; an unavailable store gets
        the count later (the enforcer's backlog): the sessions are ended either way."""
        try:
            return await self.policy.record_enforcement(actor, directive, ended, node=node)
        except StoreUnavailable as exc:
            self.enforcer.backlog.add(
                f"the count of directive {directive.id}'s ended sessions {', '.join(ended)}",
                lambda: self.policy.record_enforcement(actor, directive, ended, node=node),
                exc,
            )
            return directive.with_changes(sessions_ended=directive.sessions_ended + len(ended))

    async def release(self, directive: Directive) -> None:
        """A directive stopped being in force (lifted, expired, lapsed): undo audio-only, and
        forget that it was stopped here."""
        if directive.status != "active":
            self.stopped.discard(directive.id)
        await self.enforcer.unrestrict(directive)

    # -- other nodes (signaling/bus.py delivers) --------------------------------------------
    async def reload(self) -> None:
        """Rebuild the directive index from the store (the bus's start, after its cursor)."""
        await self.policy.load()

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        """An event another node committed. Replays are harmless: every branch is idempotent.

        `announced`: the event came in its notification and is the newest this node has heard
        of, so a new directive's state is the one the event carries; otherwise its current
        state is read, since a later event may have changed it.
        """
        if event.action == ISSUED or event.action in CHANGED:
            directive_id = event.subject.removeprefix("directive:")
            directive = carried(event) if announced else None
            if directive is None:
                directive = await self.policy.store.get_directive(directive_id)
            if directive is None:
                return
            if directive.status == "pending":  # a request: in force nowhere until confirmed
                self.policy.learn(directive)
                return
            if directive.status != "active":
                if self.policy.learn(directive):
                    await self.release(directive)
                return
            stopped = self._learn_and_stop(directive)
            if stopped:
                # Media stopped already; telling, recording and counting run on, so that the
                # next event (another directive, say) need not wait for them.
                self.background.spawn(self._count_here(directive, stopped))
        elif event.action == SESSION_END_REQUESTED:
            await self._end_requested(event)
        elif event.action == STATE_ACCEPTED:  # rows restored to the chain: read them again
            await self.policy.load()  # (the scheduler's start_due enforces what is new)

    async def _count_here(self, directive: Directive, stopped: Stopped) -> None:
        """Complete what another node's directive stopped here, and add this node's count."""
        try:
            await self._complete(SYSTEM, directive, stopped, node=self.node_id)
        except PolicyError as exc:  # the sessions are ended either way; only the count is short
            log.warning(
                "node %s: could not record that directive %s ended sessions here: %s",
                self.node_id, directive.id, exc,
            )  # fmt: skip

    async def _end_requested(self, event: AuditEvent) -> None:
        session = self.enforcer.sessions.by_id.get(str(event.data.get("session")))
        if session is not None and not session.ended:
            by = str(event.data.get("by") or event.actor)
            await self.enforcer.end_session(session, by, Close.REFUSED, message=STAFF_ENDED)

    def cut_off(self) -> None:
        """The link to the cluster dropped: remember which sessions were live then."""
        self.live_at_loss = set(self.enforcer.sessions.by_id)

    async def rejoined(self) -> None:
        """Caught up after a cut: sessions that ended here while the store was unreachable
        are still live in it; close their records (reason `error`). Only sessions live when
        the link was lost and gone now: an admission half-way then is not mistaken for one."""
        await self.background.drain(5.0)  # sessions the catch-up ended: their records first
        await self.enforcer.completing.drain(5.0)  # and those other policy changes halted
        if not await self.enforcer.backlog.flush(force=True):  # and the ones kept meanwhile
            raise StoreUnavailable("store-unavailable", "the store refused the kept records")
        live = self.enforcer.sessions.by_id
        for record in await self.policy.store.list_sessions(live=True, node=self.node_id):
            if record.id in self.live_at_loss and record.id not in live:
                await self.policy.session_ended(record, Reason.ERROR)

    async def drain(self, timeout: float) -> None:
        """Let the counts of sessions just ended land (before shutting down)."""
        await self.background.drain(timeout)


def carried(event: AuditEvent) -> Directive | None:
    """The new directive an announced `directive.issued` event carries (None: read it)."""
    if event.action != ISSUED:
        return None
    with contextlib.suppress(PolicyError, KeyError, TypeError, ValueError):
        return Directive.from_json(event.data)
    return None
