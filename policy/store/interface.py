"""What the domain needs from persistence (`Store`), and what only a cluster needs (`Cluster`).

`Store` is the one interface the rest of the code sees. Two implementations exist, both on
the SQL written once in `policy/store/sql.py`: `policy/store/sqlite.py` (the embedded
default) and `policy/store/postgres.py` (the shared store of a cluster). `open_store` picks
one from the URL at start-up; nothing above it can tell which runs.

A cluster needs more than a store: the audit log as a bus (`listen`, `audit_head`) and the
table that says which node holds a visit's call (`place`, `leave`). Those are `Cluster`, a
separate small interface; `Store.cluster` is the store's implementation of it, or None when
the store is not shared (SQLite: one node, nothing to listen to, every visit here). The
cluster bus is chosen by that (`signaling/bus.py:open_bus`), never by asking which class
the store is.

Every change is written together with its audit event in one transaction, so a state change
without its audit record, or the reverse, cannot be observed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from policy.appeal import Appeal
from policy.approval import Approval
from policy.audit import AuditEvent
from policy.directive import Directive
from policy.recording import Recording
from policy.roster import Contact, Device, Facility, Inmate
from policy.session import SessionRecord
from policy.visit import Visit


@dataclass(frozen=True)
class AuditDraft:
    """An audit event before the store gives it a sequence number and seals it."""

    actor: str
    action: str
    subject: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Presence:
    """A kiosk's last presence transition: `online` on `node` since `since`, or `offline`
    since `since` (the connection's end), last heard from at `last_seen`."""

    device: str
    state: str  # "online" | "offline"
    node: str
    since: float
    last_seen: float


@dataclass(frozen=True)
class StoredState:
    """The audit chain and the rows it projects to (directives, approvals, visits), read
    together in one snapshot: what `policy/replay.py` compares."""

    events: list[AuditEvent]
    head: tuple[int, str]  # the chain's head (seq, hash) as the store records it
    directives: dict[str, Directive]
    approvals: dict[tuple[str, str], str]  # (contact, inmate) -> status
    visits: dict[str, Visit]
    recordings: dict[str, Recording] = field(default_factory=dict)
    facilities: dict[str, Facility] = field(default_factory=dict)
    guardians: dict[str, tuple[str, ...]] = field(default_factory=dict)  # minor -> guardians


@dataclass(frozen=True)
class Restoration:
    """Rows to make what the audit chain implies (`Store.restore`): written only if the
    chain's head is still `head`. An approval mapped to None is removed."""

    head: int
    directives: list[Directive] = field(default_factory=list)
    stray_directives: list[str] = field(default_factory=list)  # rows the chain never made
    approvals: dict[tuple[str, str], str | None] = field(default_factory=dict)
    visits: list[Visit] = field(default_factory=list)
    stray_visits: list[str] = field(default_factory=list)
    recordings: list[Recording] = field(default_factory=list)
    stray_recordings: list[str] = field(default_factory=list)
    facilities: list[Facility] = field(default_factory=list)  # fields restored, never removed
    guardians: dict[str, tuple[str, ...]] = field(default_factory=dict)  # minor -> all of them


@dataclass(frozen=True)
class Placement:
    """Which node hosts a visit's call, and the WebSocket URL participants are sent to."""

    visit: str
    node: str
    url: str


class Listener(Protocol):
    """A cluster node's link to the shared store: it hears committed events and carries the
    node's heartbeat. Opened by `Cluster.listen`."""

    async def heartbeat(self, node: str, url: str) -> None:
        """Record that `node` is alive; a failure means the link to the cluster is down."""

    def close(self) -> None:
        """Drop the link at once."""


class Cluster(Protocol):
    """What only a shared store offers: the audit log as a bus, and where each call lives."""

    async def audit_head(self) -> int:
        """The sequence number of the last committed audit event: a bus cursor starts here."""

    async def listen(
        self,
        on_event: Callable[[int, AuditEvent | None, bool], None],
        on_lost: Callable[[], None],
    ) -> Listener:
        """Hear every committed event: `on_event(seq, event or None, written by this store)`;
        `on_lost()` once when the link dies."""

    async def place(self, visit: str, node: str, url: str, stale_after: float) -> Placement:
        """Claim a visit for `node` unless a live node holds it; return who holds it now."""

    async def leave(self, node: str) -> None:
        """A node shutting down: its visits may be placed elsewhere at once."""

    async def live_nodes(self, stale_after: float) -> set[str]:
        """The nodes whose heartbeat is younger than `stale_after` seconds."""


class Store(Protocol):
    """Domain-level persistence: records in, records out, each write with its audit event."""

    head_seq: int  # the highest audit sequence number this process knows of

    @property
    def cluster(self) -> Cluster | None:
        """The cluster-only half of a shared store; None for a store only this node uses."""

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    # -- the audit log's tail -----------------------------------------------------------
    def noticed(self, seq: int) -> None:
        """The audit log reached `seq` (a local commit, or another node's on the bus)."""

    async def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Wait until the audit log passes `seq`; False on timeout."""

    # -- roster -------------------------------------------------------------------------
    async def add_facility(self, facility: Facility, audit: AuditDraft) -> AuditEvent: ...

    async def add_device(self, device: Device, audit: AuditDraft) -> AuditEvent: ...

    async def add_inmate(self, inmate: Inmate, audit: AuditDraft) -> AuditEvent: ...

    async def add_contact(self, contact: Contact, audit: AuditDraft) -> AuditEvent: ...

    async def update_facility(self, facility: Facility, audit: AuditDraft) -> AuditEvent: ...

    async def update_inmate(self, inmate: Inmate, audit: AuditDraft) -> AuditEvent: ...

    async def update_contact(self, contact: Contact, audit: AuditDraft) -> AuditEvent: ...

    async def set_approval(
        self, contact: str, inmate: str, status: str, audit: AuditDraft,
        *, reason: str | None = None, by: str | None = None,
    ) -> AuditEvent: ...  # fmt: skip

    async def get_approval(self, contact: str, inmate: str) -> Approval | None: ...

    async def set_guardians(
        self, minor: str, guardians: tuple[str, ...], audit: AuditDraft
    ) -> AuditEvent:
        """Replace a minor's guardians (an empty tuple clears them)."""

    async def wards_of(self, guardian: str) -> list[str]:
        """The minors `guardian` is a guardian of."""

    async def list_approvals(
        self, *, status: str | None = None, contact: str | None = None
    ) -> list[Approval]: ...

    async def get_facility(self, facility_id: str) -> Facility | None: ...

    async def list_facilities(self) -> list[Facility]: ...

    async def get_device(self, device_id: str) -> Device | None: ...

    async def list_devices(self) -> list[Device]: ...

    async def get_inmate(self, inmate_id: str) -> Inmate | None: ...

    async def list_inmates(self) -> list[Inmate]: ...

    async def get_contact(self, contact_id: str) -> Contact | None: ...

    async def list_contacts(self) -> list[Contact]: ...

    # -- recordings (policy/recording.py) -----------------------------------------------
    async def add_recording(self, recording: Recording, audit: AuditDraft) -> AuditEvent: ...

    async def update_recording(
        self, recording: Recording, audit: AuditDraft, *, expect_status: str
    ) -> AuditEvent:
        """Replace a recording's state, only from `expect_status` (else `Conflict`)."""

    async def hold_recording(
        self, recording: Recording, audit: AuditDraft, *, was_held: bool
    ) -> AuditEvent:
        """Set or release its hold, only if not deleted and its hold is still `was_held`."""

    async def get_recording(self, recording_id: str) -> Recording | None: ...

    async def list_recordings(
        self, *, visit: str | None = None, facility: str | None = None,
        after: float | None = None, before: float | None = None, status: str | None = None,
    ) -> list[Recording]: ...  # fmt: skip

    # -- visits -------------------------------------------------------------------------
    async def add_visit(
        self, visit: Visit, audit: AuditDraft, *, buffer: float | None = None
    ) -> AuditEvent:
        """Insert a visit; with `buffer` (seconds), only while no other booked visit at its
        kiosk overlaps its window widened by `buffer` (else `Conflict` `double-booked`),
        decided inside the transaction so that two bookings cannot both win."""

    async def update_visit(
        self, visit: Visit, audit: AuditDraft, *, buffer: float | None = None
    ) -> AuditEvent:
        """Replace a visit's state, only from `visit.version - 1` (else `Conflict`); with
        `buffer`, only while its kiosk is free in its (new) window."""

    async def overlapping(
        self, device: str, starts_at: float, ends_at: float, *, exclude: str = ""
    ) -> list[Visit]: ...

    async def get_visit(self, visit_id: str) -> Visit | None: ...

    async def list_visits(
        self, *, device: str | None = None, after: float | None = None,
        before: float | None = None, status: str | None = None, facility: str | None = None,
        inmate: str | None = None, contact: str | None = None,
    ) -> list[Visit]: ...  # fmt: skip

    # -- sessions -----------------------------------------------------------------------
    async def session_started(self, record: SessionRecord, audit: AuditDraft) -> AuditEvent: ...

    async def session_ended(
        self, session_id: str, ended_at: float, reason: str, audit: AuditDraft
    ) -> AuditEvent: ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(
        self, *, live: bool = True, node: str | None = None, visit: str | None = None
    ) -> list[SessionRecord]: ...

    async def end_orphan_sessions(self, node: str, reason: str, audit: AuditDraft) -> AuditEvent:
        """On start-up: sessions this node left open when it died ended with it."""

    # -- directives and appeals ---------------------------------------------------------
    async def add_directive(self, directive: Directive, audit: AuditDraft) -> AuditEvent: ...

    async def update_directive(
        self, directive: Directive, audit: AuditDraft, *, expect_status: str | None = None
    ) -> AuditEvent:
        """Replace a directive's mutable state; with `expect_status`, only from that status
        (else `Conflict`, and the audit event is not written)."""

    async def count_enforcement(
        self, directive_id: str, ended: int, audit: AuditDraft
    ) -> AuditEvent:
        """Add `ended` to a directive's count of ended sessions, in place."""

    async def get_directive(self, directive_id: str) -> Directive | None: ...

    async def list_directives(
        self,
        *,
        status: str | None = None,
        scope: str | None = None,
        closed_after: float | None = None,
    ) -> list[Directive]:
        """Newest first; only those with `status`, on `scope`, or still open or closed after
        `closed_after` (the ones in force at some moment since), when given."""

    async def add_appeal(self, appeal: Appeal, audit: AuditDraft) -> AuditEvent: ...

    async def decide_appeal(self, appeal: Appeal, audit: AuditDraft) -> AuditEvent:
        """Record a decision on an open appeal (else `Conflict`)."""

    async def get_appeal(self, appeal_id: str) -> Appeal | None: ...

    async def list_appeals(self, *, directive: str | None = None) -> list[Appeal]: ...

    # -- kiosk presence -------------------------------------------------------------------
    async def set_presence(
        self, presence: Presence, audit: AuditDraft, *, expect_node: str | None = None
    ) -> AuditEvent:
        """Record a kiosk's transition; with `expect_node`, only while that node holds it
        online (else `Conflict`)."""

    async def list_presence(self, *, node: str | None = None) -> list[Presence]: ...

    # -- audit --------------------------------------------------------------------------
    async def audit_about(self, subject: str) -> list[AuditEvent]:
        """The events about one subject (e.g. `visit:V1`), in order."""

    async def audit_events(
        self, *, after: int = 0, limit: int | None = None
    ) -> list[AuditEvent]: ...

    async def audit_chain(self) -> tuple[list[AuditEvent], tuple[int, str]]:
        """Every event and the chain's head (seq, hash), read together."""

    async def audit(self, draft: AuditDraft) -> AuditEvent:
        """An audit event with no other state change (e.g. a refused monitor join)."""

    # -- the state as a projection of the chain (policy/replay.py) ----------------------
    async def state(self) -> StoredState:
        """The audit chain and the rows it projects to, read in one snapshot."""

    async def restore(self, restoration: Restoration, audit: AuditDraft) -> AuditEvent:
        """Make the rows what the chain implies, with `audit`, in one transaction; `Conflict`
        if an event was written since the state was read."""
