"""A scheduled call, and the subject keys that decide which directives match its sessions.

A visit is `booked` until its window has passed (then `ended`, or `no-show` when no contact
joined) or it is `cancelled` with a structured reason. Whether it is *live* is not stored: it
is whether a session of it is live. Rescheduling keeps its id (the links sent to families go
on working) and remembers the window it was moved from; every change raises `version`, so
of two copies of a visit the newer is known without reading the store (`VisitChanges`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from policy.rfc3339 import format_time, parse_time

VISIT_KINDS = ("social", "privileged")
VISIT_STATUSES = ("booked", "cancelled", "ended", "no-show")
# Why staff cancel a visit (SPEC §6); "other" needs a note.
CANCEL_REASONS = (
    "lockdown", "kiosk-maintenance", "illness", "facility-closure", "contact-request", "other",
)  # fmt: skip
# Why the server cancels one by itself: no approved contact was left on it (SPEC §4).
APPROVAL_WITHDRAWN = "approval-withdrawn"


@dataclass(frozen=True)
class Visit:
    id: str
    facility: str
    inmate: str
    device: str
    contacts: tuple[str, ...]
    starts_at: float
    ends_at: float
    kind: str
    created_by: str
    created_at: float
    status: str = "booked"
    version: int = 1
    cancel_reason: str | None = None  # one of CANCEL_REASONS, or APPROVAL_WITHDRAWN
    cancel_note: str | None = None  # shown to the family with the reason
    cancelled_at: float | None = None
    cancelled_by: str | None = None
    moved_from: tuple[float, float] | None = None  # the window before the last reschedule
    moved_at: float | None = None
    moved_by: str | None = None
    closed_at: float | None = None  # when it became ended or no-show

    @property
    def monitored(self) -> bool:
        """Social visits may be monitored; privileged (attorney, clergy) never are."""
        return self.kind == "social"

    @property
    def booked(self) -> bool:
        return self.status == "booked"

    def is_open(self, now: float, *, early: float = 300.0) -> bool:
        """Participants may connect from `early` seconds before the start until the end."""
        return self.starts_at - early <= now < self.ends_at

    def with_changes(self, **changes: Any) -> Visit:
        """A changed copy, one version newer."""
        return replace(self, **changes, version=self.version + 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "facility": self.facility,
            "inmate": self.inmate,
            "device": self.device,
            "contacts": list(self.contacts),
            "starts_at": format_time(self.starts_at),
            "ends_at": format_time(self.ends_at),
            "kind": self.kind,
            "monitored": self.monitored,
            "created_by": self.created_by,
            "created_at": format_time(self.created_at),
            "status": self.status,
            "version": self.version,
            "cancellation": None
            if self.status != "cancelled"
            else {
                "reason": self.cancel_reason,
                "note": self.cancel_note,
                "at": format_time(self.cancelled_at),
                "by": self.cancelled_by,
            },
            "moved": None
            if self.moved_from is None
            else {
                "from": {
                    "starts_at": format_time(self.moved_from[0]),
                    "ends_at": format_time(self.moved_from[1]),
                },
                "at": format_time(self.moved_at),
                "by": self.moved_by,
            },
            "closed_at": format_time(self.closed_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Visit:
        """The inverse of `to_json` (the derived `monitored` is ignored): how the audit
        chain's visit events, which carry the whole visit, are read back (policy/replay.py).
        An event from before a visit had a life (status, version, ...) reads as booked."""

        def moment(value: Any, name: str) -> float | None:
            return None if value is None else parse_time(value, name)

        cancelled = data.get("cancellation") or {}
        moved = data.get("moved")
        return cls(
            id=str(data["id"]), facility=str(data["facility"]), inmate=str(data["inmate"]),
            device=str(data["device"]), contacts=tuple(str(c) for c in data["contacts"]),
            starts_at=parse_time(data["starts_at"], "starts_at"),
            ends_at=parse_time(data["ends_at"], "ends_at"), kind=str(data["kind"]),
            created_by=str(data["created_by"]),
            created_at=parse_time(data["created_at"], "created_at"),
            status=str(data.get("status", "booked")), version=int(data.get("version", 1)),
            cancel_reason=cancelled.get("reason"), cancel_note=cancelled.get("note"),
            cancelled_at=moment(cancelled.get("at"), "cancellation.at"),
            cancelled_by=cancelled.get("by"),
            moved_from=None if not moved else (
                parse_time(moved["from"]["starts_at"], "moved.from.starts_at"),
                parse_time(moved["from"]["ends_at"], "moved.from.ends_at"),
            ),
            moved_at=moment(moved.get("at"), "moved.at") if moved else None,
            moved_by=moved.get("by") if moved else None,
            closed_at=moment(data.get("closed_at"), "closed_at"),
        )  # fmt: skip


def device_keys(facility: str, device: str) -> tuple[str, ...]:
    """The keys of a kiosk outside any visit (its token refresh): its facility and itself."""
    return ("system", f"facility:{facility}", f"device:{device}")


def subject_keys(visit: Visit, *, contact: str | None = None) -> tuple[str, ...]:
    """SPEC §4: the kiosk's keys; a contact adds `contact:C` and `pair:I:C`."""
    keys = [
        *device_keys(visit.facility, visit.device),
        f"inmate:{visit.inmate}",
        f"visit:{visit.id}",
    ]
    if contact is not None:
        keys += [f"contact:{contact}", f"pair:{visit.inmate}:{contact}"]
    return tuple(keys)


def monitor_keys(visit: Visit, operator_sub: str) -> tuple[str, ...]:
    """A monitor session matches system, its facility, its visit and its operator's own key."""
    return ("system", f"facility:{visit.facility}", f"visit:{visit.id}", operator_sub)


def window_json(starts_at: float, ends_at: float) -> dict[str, str | None]:
    return {"starts_at": format_time(starts_at), "ends_at": format_time(ends_at)}


@dataclass
class VisitChanges:
    """The newest version of every visit changed since this node started (cancelled, moved,
    its kind changed, closed), updated synchronously when a change commits here and when
    another node's arrives on the bus.

    Admission reads a visit from the store, then decides in one synchronous block: a change
    committed in between is here, and `current` hands admission the newer copy (the same
    argument as for directives, signaling/admission.py). Entries are dropped a while after
    their window ended, when nothing can join them any more.
    """

    latest: dict[str, Visit] = field(default_factory=dict)

    def put(self, visit: Visit) -> None:
        known = self.latest.get(visit.id)
        if known is None or visit.version >= known.version:
            self.latest[visit.id] = visit

    def current(self, visit: Visit) -> Visit:
        known = self.latest.get(visit.id)
        return known if known is not None and known.version > visit.version else visit

    def prune(self, now: float, keep: float = 3600.0) -> None:
        for visit_id in [v.id for v in self.latest.values() if v.ends_at + keep < now]:
            del self.latest[visit_id]
