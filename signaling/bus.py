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

The bus only carries: every event another node committed goes, in order, to the node's
`Receiver` (signaling/directives.py's `Directives`), which decides what it means here — a
directive issued elsewhere ends the matching sessions of this node, a lift releases them, a
`session.end-requested` ends that session if it is live here.

Fail closed (SPEC §4): the listening connection also carries a heartbeat (`nodes.last_seen`)
every `HEARTBEAT_SECONDS`. When the connection drops, READY is cleared at once; when a
heartbeat fails or goes unanswered for `HEARTBEAT_TIMEOUT`, at the latest 0.8 s after the
database fell silent. Admissions are then refused (`unavailable`, close 4503) and `/readyz`
answers 503. Live sessions and the in-memory directive index are left alone: the node keeps
enforcing what it knows. It then reconnects on its own, catches up from the cursor, lets the
receiver close the session records it could not close meanwhile (`Receiver.rejoined`), and
only then sets READY again. (A stall of this node's own event loop is not counted as the
database's silence: see `_within_timeout`.)

Other nodes' directives reach this node after their commit, in the notification itself: its
payload is the committed event (see `policy/store/postgres.py`), and the event of a new directive
carries the directive. When the announced event is the next one after the cursor, it is
delivered straight from the payload — no database round trip between the notification and
the receiver, which stops the media before it first awaits anything. Otherwise (a gap,
a payload too large to carry the event, a reconnect) the events are read from the log, and
a directive's *current* state is read from its table, since a later event may have changed
it. The issuing node answers its API call as soon as the directive is committed and
enforced locally, so on the other nodes the kill completes shortly *after* that answer
(`bench/kill_latency.py --nodes 2` measures by how much).

Placement: each visit's call lives on one node (`placements`). The first admission claims
it; an admission reaching another node gets

    {"type": "redirect", "url": "<ws url of the owning node>"}   then close 4307

(4307, `Close.REDIRECT` in signaling/protocol.py, is Parlor's addition to SPEC §5: "join
there instead"; clients reconnect to `url` with the same join message). A placement whose node has not sent a heartbeat for `STALE_AFTER`
seconds, or that left the cluster, is taken over by the next admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Protocol

from policy.audit import AuditEvent
from policy.errors import PolicyError, StoreUnavailable
from policy.store import Cluster, Listener, Store
from policy.visit import Visit
from signaling.config import Config

log = logging.getLogger("parlor.bus")

HEARTBEAT_SECONDS = 0.4  # how often (start to start) a node proves it can reach the database
HEARTBEAT_TIMEOUT = 0.4  # slower counts as lost; worst case to READY cleared: 0.4 + 0.4 s < 1 s
STALE_AFTER = 10.0  # a placement whose node is silent this long can be taken over
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)  # then every 1 s until the database answers
BATCH = 500  # audit events read per catch-up query


class Receiver(Protocol):
    """What the bus delivers to: the node's reactions to the cluster (signaling/directives.py)."""

    async def reload(self) -> None:
        """Rebuild the node's view of the store (at start, once the cursor is taken)."""

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        """One event another node committed, in order. `announced`: it came whole in its
        notification and is the newest heard of (no later event changed what it carries)."""

    def cut_off(self) -> None:
        """The link to the database was lost (admissions are being refused)."""

    async def rejoined(self) -> None:
        """Reconnected and caught up, before admissions resume."""


class Hearer(Protocol):
    """A receiver of events only (signaling/approvals.py, signaling/visits.py)."""

    async def reload(self) -> None: ...

    async def heard(self, event: AuditEvent, *, announced: bool) -> None: ...


class Receivers:
    """One receiver and some hearers as one: each hears every event, in the order given (the
    directive owner first: a kill is the most urgent thing an event can ask for); the
    receiver alone is told of a cut and of the rejoin."""

    def __init__(self, receiver: Receiver, *hearers: Hearer) -> None:
        self.receiver, self.hearers = receiver, hearers

    async def reload(self) -> None:
        await self.receiver.reload()
        for hearer in self.hearers:
            await hearer.reload()

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        await self.receiver.heard(event, announced=announced)
        for hearer in self.hearers:
            await hearer.heard(event, announced=announced)

    def cut_off(self) -> None:
        self.receiver.cut_off()

    async def rejoined(self) -> None:
        await self.receiver.rejoined()


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
        cluster: Cluster,
        store: Store,
        receiver: Receiver,
        ready: asyncio.Event,
        *,
        node_id: str,
        url: str,
    ) -> None:
        self.cluster, self.store, self.receiver = cluster, store, receiver
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

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        # Head first, then reload: whatever commits in between is both in the index and
        # replayed, never missed (replaying is harmless: see `Receiver.heard`).
        self.cursor = await self.cluster.audit_head()
        await self.receiver.reload()
        await self._connect()
        await self._catch_up(read=True)
        self._tasks = [
            asyncio.create_task(self._link(), name=f"parlor-bus-link-{self.node_id}"),
            asyncio.create_task(self._events(), name=f"parlor-bus-events-{self.node_id}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._drop_listener()
        # Leave the cluster: the visits placed here can be placed elsewhere at once.
        with contextlib.suppress(TimeoutError, PolicyError):
            await asyncio.wait_for(self.cluster.leave(self.node_id), 1.0)

    # -- placement ------------------------------------------------------------------------
    async def place(self, visit: Visit) -> str | None:
        placement = await self.cluster.place(visit.id, self.node_id, self.url, STALE_AFTER)
        return None if placement.node == self.node_id else placement.url

    # -- the link: heartbeat, fail closed, reconnect ----------------------------------------
    async def _connect(self) -> None:
        lost = asyncio.Event()

        def on_lost() -> None:  # the connection died: fail closed now, not at the next beat
            lost.set()
            if self._lost is lost:  # (a late callback of a link already replaced changes nothing)
                self.ready.clear()

        listener = await self.cluster.listen(self._notified, on_lost)
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
            self.receiver.cut_off()
            self._drop_listener()
            await self._rejoin()

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

    async def _rejoin(self) -> None:
        """Reconnect, catch up, let the receiver close what could not be closed, then admit
        again."""
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        attempt = 0
        while True:
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1
            try:
                await self._connect()
                await self._catch_up(read=True)
                await self.receiver.rejoined()
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
                self._announced = {
                    seq: e for seq, e in self._announced.items() if seq > self.cursor
                }
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
                await self.receiver.heard(event, announced=as_announced)
        except PolicyError:
            self._must_read = True  # retried from this event, read from the log, once it answers
            raise
        except Exception:
            log.exception("node %s: could not apply audit event %d", self.node_id, event.seq)
        self.cursor = event.seq
        self.store.noticed(event.seq)  # wakes the staff event stream after a gap too


def open_bus(config: Config, store: Store, receiver: Receiver, ready: asyncio.Event) -> Bus:
    """The bus that matches the store: a shared store (one with a `Cluster`) is a cluster,
    any other store is one node."""
    cluster = store.cluster
    if cluster is None:
        return EmbeddedBus()
    base = config.node_url or config.base_url
    return PostgresBus(cluster, store, receiver, ready, node_id=config.node_id, url=ws_url(base))
