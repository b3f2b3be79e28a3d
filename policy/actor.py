"""Who is acting: a token's subject and role, as the domain sees them (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("family", "kiosk", "operator", "supervisor", "auditor")
STAFF_ROLES = ("operator", "supervisor")


@dataclass(frozen=True)
class Actor:
    sub: str  # e.g. "operator:alice", "contact:C1", "device:K1"
    role: str
    visit: str | None = None  # family tokens are bound to one visit

    @property
    def subject_id(self) -> str:
        """The id after the kind: 'contact:C1' -> 'C1'."""
        return self.sub.split(":", 1)[1] if ":" in self.sub else self.sub

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES


SYSTEM = Actor(sub="system:parlor", role="system")
