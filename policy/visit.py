"""A scheduled call, and the subject keys that decide which directives match its sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policy.rfc3339 import format_time, parse_time

VISIT_KINDS = ("social", "privileged")


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

    @property
    def monitored(self) -> bool:
        """Social visits may be monitored; privileged (attorney, clergy) never are."""
        return self.kind == "social"

    def is_open(self, now: float, *, early: float = 300.0) -> bool:
        """Participants may connect from `early` seconds before the start until the end."""
        return self.starts_at - early <= now < self.ends_at

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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Visit:
        """The inverse of `to_json` (the derived `monitored` is ignored): how the audit
        chain's `visit.created` is read back (policy/replay.py)."""
        return cls(
            id=str(data["id"]), facility=str(data["facility"]), inmate=str(data["inmate"]),
            device=str(data["device"]), contacts=tuple(str(c) for c in data["contacts"]),
            starts_at=parse_time(data["starts_at"], "starts_at"),
            ends_at=parse_time(data["ends_at"], "ends_at"), kind=str(data["kind"]),
            created_by=str(data["created_by"]),
            created_at=parse_time(data["created_at"], "created_at"),
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
