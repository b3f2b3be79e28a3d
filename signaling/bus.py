"""The cluster bus: how a node learns what other nodes did, and where a visit's call lives.

One interface, two implementations chosen at start-up by `open_bus` (SPEC §8):

- `EmbeddedBus` (SQLite): one node holds every session and every directive is issued on it,
  so there is nothing to listen to and every visit is placed here.
- `PostgresBus`: the audit log *is* the bus. Every write appends an audit event and sends
  `NOTIFY parlor_events` in the same transaction. The bus LISTENs on a dedicated connection,
  keeps a cursor (the last audit sequence number it processed) and, on every notification
  and after every reconnect, reads the events after the cursor in order. A notification is
  only a wake-up call; the cursor makes delivery complete and ordered, so an event
  committed while this node was cut off is applied when it comes back.

What an event from another node does here:

- `directive.issued`: learn the directive and end (or restrict) the matching live sessions
  of this node — the same `Enforcer.apply` the issuing node ran.
- `directive.lifted/expired/lapsed/confirmed`: learn the new state; undo audio-only.
- `session.end-requested` (`data: {session, by}`, written by `POST /sessions/{id}/end` on a
  node that does not hold the session): end that session if it is live here.

Fail closed (SPEC §4): the listening connection also carries a heartbeat (`nodes.last_seen`)
every `HEARTBEAT_SECONDS`. When the connection drops, READY is cleared at once; when a
heartbeat fails or goes unanswered for `HEARTBEAT_TIMEOUT`, at the latest 0.8 s after the
database fell silent. Admissions are then refused (`unavailable`, close 4503) and `/readyz`
answers 503. Live sessions and the in-memory directive index are left alone: the node keeps
enforcing what it knows. It then reconnects on its own, catches up from the cursor, closes
the session records it could not close meanwhile (reason `error`), and only then sets READY
again. (A stall of this node's own event loop is not counted as the database's silence:
see `_within_timeout`.)

Other nodes' directives reach this node after their commit, in the notification itself: its
payload is the committed event (see `policy.pgstore`), and the event of a new directive
carries the directive. When the announced event is the next one after the cursor, it is
applied straight from the payload — no database round trip between the notification and
`Enforcer.apply`, which stops the media before it first awaits anything. Otherwise (a gap,
a payload too large to carry the event, a reconnect) the events are read from the log, and
a directive's *current* state is read from its table, since a later event may have changed
it. The issuing node answers its API call as soon as the directive is committed and
enforced locally, so on the other nodes the kill completes shortly *after* that answer
(`bench/kill_latency.py --nodes 2` measures by how much).

Placement: each visit's call lives on one node (`placements`). The first admission claims
it; an admission reaching another node gets

    {"type": "redirect", "url": "<ws url of the owning node>"}   then close 4307

(4307 is Parlor's addition to SPEC §5: "join there instead"; clients reconnect to `url` with
the same join message). A placement whose node has not sent a heartbeat for `STALE_AFTER`
seconds, or that left the cluster, is taken over by the next admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable

from policy.actor import SYSTEM
from policy.audit import AuditEvent
from policy.directive import Directive
from policy.errors import PolicyError, StoreUnavailable
from policy.pgstore import Listener, PostgresStore
from policy.service import Policy
from policy.store import Store
from policy.visit import Visit
from signaling.background import Background
from signaling.config import Config
from signaling.enforcer import REFUSED, Enforcer
from signaling.registry import LiveSessions
from signaling.session import Session

log = logging.getLogger("parlor.bus")

REDIRECT = 4307  # WebSocket close code: this visit lives on another node; join at `url`

HEARTBEAT_SECONDS = 0.4  # how often (start to start) a node proves it can reach the database
HEARTBEAT_TIMEOUT = 0.4  # slower counts as lost; worst case to READY cleared: 0.4 + 0.4 s < 1 s
STALE_AFTER = 10.0  # a placement whose node is silent this long can be taken over
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)  # then every 1 s until the database answers
BATCH = 500  # audit events read per catch-up query

SESSION_END_REQUESTED = "session.end-requested"
DIRECTIVE_CHANGES = (
    "directive.lifted",
    "directive.expired",
    "directive.lapsed",
    "directive.confirmed",
)

OPERATOR_ENDED = "Facility staff ended this call."


def ws_url(base_url: str) -> str:
    """http(s)://host[:port] -> ws(s)://host[:port]/ws"""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + "/ws"
    return "ws://" + base.removeprefix("http://") + "/ws"


class Bus(ABC):
    """What a node needs from the rest of the cluster."""

    @abstractmethod
    async def start(self) -> None:
        """Begin receiving other nodes' events; called once directives are loaded."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def place(self, visit: Visit) -> str | None:
        """Claim `visit` for this node; None if it is (now) here, else the owner's WS URL."""


class EmbeddedBus(Bus):
    """One node, one process: nothing to hear, every visit lives here."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def place(self, visit: Visit) -> str | None:
        return None


class PostgresBus(Bus):
    def __init__(
        self,
        store: PostgresStore,
        policy: Policy,
        enforcer: Enforcer,
        sessions: LiveSessions,
        ready: asyncio.Event,
        *,
        node_id: str,
        url: str,
    ) -> None:
        self.store, self.policy, self.enforcer, self.sessions = store, policy, enforcer, sessions
        self.ready = ready
        self.node_id, self.url = node_id, url
        self.cursor = 0  # the last audit sequence number processed
        # Events carried by notifications, by seq, each with whether this node wrote it.
        self._announced: dict[int, tuple[AuditEvent, bool]] = {}
        self._must_read = False  # a notification did not carry its event: read the log
        self._wake = asyncio.Event()
        # One catch-up at a time: the cursor only moves forward, in order.
        self._lock = asyncio.Lock()
        self._listener: Listener | None = None
        self._lost = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background = Background()  # enforcements being finished and counted

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        # Head first, then reload: whatever commits in between is both in the index and
        # replayed, never missed (replaying is harmless: see `_deliver`).
        self.cursor = await self.store.audit_head()
        await self.policy.load()
        await self._connect()
        await self._catch_up(read=True)
        self._tasks = [
            asyncio.create_task(self._link(), name=f"parlor-bus-link-{self.node_id}"),
            asyncio.create_task(self._events(), name=f"parlor-bus-events-{self.node_id}"),
        ]

    async def stop(self) -> None:
        await self._background.drain(1.0)  # counts of sessions just ended: let them land
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._drop_listener()
        # Leave the cluster: the visits placed here can be placed elsewhere at once.
        with contextlib.suppress(TimeoutError, PolicyError):
            await asyncio.wait_for(self.store.leave(self.node_id), 1.0)

    # -- placement ------------------------------------------------------------------------
    async def place(self, visit: Visit) -> str | None:
        placement = await self.store.place(visit.id, self.node_id, self.url, STALE_AFTER)
        return None if placement.node == self.node_id else placement.url

    # -- the link: heartbeat, fail closed, reconnect ----------------------------------------
    async def _connect(self) -> None:
        lost = asyncio.Event()

        def on_lost() -> None:  # the connection died: fail closed now, not at the next beat
            lost.set()
            if self._lost is lost:  # (a late callback of a link already replaced changes nothing)
                self.ready.clear()

        listener = await self.store.listen(self._notified, on_lost)
        self._listener, self._lost = listener, lost
        await asyncio.wait_for(listener.heartbeat(self.node_id, self.url), HEARTBEAT_TIMEOUT * 5)

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    async def _link(self) -> None:
        while True:
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "node %s lost the database (%s): refusing admissions", self.node_id, exc
                )
            self.ready.clear()
            self._drop_listener()
            await self._rejoin(live_at_loss=set(self.sessions.by_id))

    async def _beat(self) -> None:
        """Heartbeat until the link fails; return (by raising) the moment it does."""
        loop = asyncio.get_running_loop()
        while True:
            listener = self._listener
            if listener is None or self._lost.is_set():
                raise StoreUnavailable("link-lost", "the listening connection closed")
            started = loop.time()
            await self._within_timeout(listener.heartbeat(self.node_id, self.url))
            pause = max(0.0, started + HEARTBEAT_SECONDS - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), pause)

    @staticmethod
    async def _within_timeout(call: Awaitable[None]) -> None:
        """Await a heartbeat for HEARTBEAT_TIMEOUT of this event loop's *responsive* time.

        The budget is spent in short steps, and a step is charged what it was meant to last:
        when our own loop stalls (a busy media relay), the database had no chance to be
        heard, and a stall is not its silence. A silent database on a healthy loop still
        fails the heartbeat HEARTBEAT_TIMEOUT after it was sent.
        """
        task = asyncio.ensure_future(call)
        budget = HEARTBEAT_TIMEOUT
        try:
            while budget > 0:
                step = min(budget, 0.05)
                done, _ = await asyncio.wait({task}, timeout=step)
                if done:
                    return task.result()
                budget -= step
        finally:
            if not task.done():
                task.cancel()
        raise StoreUnavailable("heartbeat-timeout", "the database did not answer in time")

    async def _rejoin(self, live_at_loss: set[str]) -> None:
        """Reconnect, catch up, close what could not be closed, then admit again."""
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        attempt = 0
        while True:
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1
            try:
                await self._connect()
                await self._catch_up(read=True)
                await self._background.drain(5.0)  # sessions the catch-up ended: records first
                await self._close_stale_records(live_at_loss)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("node %s: reconnect attempt %d failed: %r", self.node_id, attempt, exc)
                self._drop_listener()
                continue
            if self._lost.is_set():
                self._drop_listener()
                continue
            self.ready.set()
            log.warning(
                "node %s is back on the database after %.1f s (%d attempts), caught up to "
                "audit seq %d: admitting",
                self.node_id,
                loop.time() - lost_at,
                attempt,
                self.cursor,
            )
            return

    async def _close_stale_records(self, live_at_loss: set[str]) -> None:
        """Sessions that ended here while the store was unreachable are still live in it.

        Only sessions that were live when the link was lost and are gone now: an admission
        that was half-way when the link dropped is not mistaken for one.
        """
        for record in await self.store.list_sessions(live=True, node=self.node_id):
            if record.id in live_at_loss and record.id not in self.sessions.by_id:
                await self.policy.session_ended(record, "error")

    async def _finish(self, directive: Directive, matching: list[Session], started: float) -> None:
        """Tell and record what `Enforcer.stop` stopped; add the sessions this node ended to
        the directive's stored count (and the audit log)."""
        ended = await self.enforcer.complete(directive, matching, started)
        if not ended:
            return
        try:
            await self.policy.record_enforcement(SYSTEM, directive, ended, node=self.node_id)
        except PolicyError as exc:  # the sessions are ended either way; only the count is short
            log.warning(
                "node %s: could not record that directive %s ended %d sessions here: %s",
                self.node_id, directive.id, len(ended), exc,
            )  # fmt: skip

    # -- events ---------------------------------------------------------------------------
    def _notified(self, seq: int, event: AuditEvent | None, own: bool = False) -> None:
        if seq != 0 and seq <= self.cursor:
            return
        if event is not None and len(self._announced) < BATCH:
            self._announced[seq] = (event, own)
        else:
            self._must_read = True
        self._wake.set()

    async def _events(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except PolicyError as exc:  # the store turns every connection failure into one
                # The link notices too; the catch-up after reconnecting resumes from the cursor.
                log.info(
                    "node %s: catch-up interrupted at seq %d: %s", self.node_id, self.cursor, exc
                )
            except Exception:  # never let this task die: it is the only reader of the log
                log.exception("node %s: catch-up failed at seq %d", self.node_id, self.cursor)

    async def _catch_up(self, *, read: bool = False) -> None:
        """Apply every event after the cursor, in order: announced ones as they came, the rest
        (and all of them when `read`: start, reconnect) read from the log."""
        async with self._lock:
            while True:
                announced = self._announced.pop(self.cursor + 1, None)
                if announced is not None:  # the next event, as committed: no read needed
                    event, own = announced
                    await self._apply(event, as_announced=True, own=own)
                    continue
                self._announced = {seq: e for seq, e in self._announced.items() if seq > self.cursor}
                if not (read or self._must_read or self._announced):
                    return  # nothing heard of that is not applied
                read, self._must_read = False, False
                events = await self.store.audit_events(after=self.cursor, limit=BATCH)
                for event in events:
                    await self._apply(event, as_announced=False)
                if len(events) < BATCH:
                    return
                read = True  # a full batch: there may be more

    async def _apply(self, event: AuditEvent, *, as_announced: bool, own: bool = False) -> None:
        """Deliver one event and move the cursor past it. An event this node wrote is not
        delivered: its own code path acted on it (the API handler enforces the directive it
        issued); the two would race, and the answer would not count the sessions it ended."""
        try:
            if not own:
                await self._deliver(event, as_announced=as_announced)
        except PolicyError:
            self._must_read = True  # retried from this event, read from the log, once it answers
            raise
        except Exception:
            log.exception("node %s: could not apply audit event %d", self.node_id, event.seq)
        self.cursor = event.seq
        self.store.noticed(event.seq)  # wakes the staff event stream after a gap too

    async def _deliver(self, event: AuditEvent, *, as_announced: bool = False) -> None:
        """Apply one event. Replays are harmless: every branch is idempotent.

        `as_announced`: the event came in its notification and is the newest this node has
        heard of, so a new directive's state is the one the event carries.
        """
        if event.action == "directive.issued" or event.action in DIRECTIVE_CHANGES:
            directive_id = event.subject.removeprefix("directive:")
            if event.action == "directive.issued" and directive_id in self.policy.index.by_id:
                return  # already known here: issued on this node, or applied before
            directive = carried(event) if as_announced else None
            if directive is None:
                directive = await self.store.get_directive(directive_id)  # its current state
            if directive is None:
                return
            self.policy.learn(directive)
            if event.action == "directive.issued":
                if directive.status == "active":
                    # Media stops now; telling, recording and counting run on, so that the
                    # next event (another directive, say) need not wait for them.
                    matching = self.enforcer.stop(directive)
                    if matching:
                        self._background.spawn(
                            self._finish(directive, matching, time.perf_counter())
                        )
                return
            await self.enforcer.released(directive)
        elif event.action == SESSION_END_REQUESTED:
            session = self.sessions.by_id.get(str(event.data.get("session")))
            if session is not None and not session.ended:
                by = str(event.data.get("by") or event.actor)
                await self.enforcer.end_session(session, by, REFUSED, message=OPERATOR_ENDED)


def carried(event: AuditEvent) -> Directive | None:
    """The new directive an announced `directive.issued` event carries (None: read it)."""
    if event.action != "directive.issued":
        return None
    try:
        return Directive.from_json(event.data)
    except (PolicyError, KeyError, TypeError, ValueError):
        return None


def open_bus(
    config: Config,
    store: Store,
    policy: Policy,
    enforcer: Enforcer,
    sessions: LiveSessions,
    ready: asyncio.Event,
) -> Bus:
    """The bus that matches the store: PostgreSQL is a cluster, anything else is one node."""
    if isinstance(store, PostgresStore):
        base = config.node_url or config.base_url
        return PostgresBus(
            store, policy, enforcer, sessions, ready, node_id=config.node_id, url=ws_url(base)
        )
    return EmbeddedBus()
