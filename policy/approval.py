"""A contact's approval to visit one inmate (SPEC §2, §4), and the in-memory index admission
reads it from.

An approval is `pending` (asked for, not decided), `approved` or `denied`. Only `approved`
admits: denying or withdrawing an approval is enforced like a directive (signaling/approvals.py),
so admission must read it where it reads the directives — in one synchronous block, from
memory (`ApprovalIndex`), never from an `await` on the store that a withdrawal could overtake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policy.rfc3339 import format_time

APPROVAL_STATUSES = ("pending", "approved", "denied")


@dataclass(frozen=True)
class Approval:
    contact: str
    inmate: str
    status: str
    updated_at: float
    reason: str | None = None  # why it was decided so (staff-facing; required to deny or withdraw)
    decided_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "contact": self.contact,
            "inmate": self.inmate,
            "status": self.status,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "updated_at": format_time(self.updated_at),
        }


def withdraws(previous: str | None, status: str) -> bool:
    """Does moving from `previous` to `status` take a contact's right to visit away? Denying
    always does (a denial of a pending request ends nothing, but it is still final); so does
    any move away from `approved`."""
    return status == "denied" or (previous == "approved" and status != "approved")


@dataclass
class ApprovalIndex:
    """(contact, inmate) -> status, for every approval in the store; updated synchronously
    when a change commits here and when another node's change arrives on the bus."""

    by_pair: dict[tuple[str, str], str] = field(default_factory=dict)

    def put(self, contact: str, inmate: str, status: str) -> None:
        self.by_pair[(contact, inmate)] = status

    def status(self, contact: str, inmate: str) -> str | None:
        return self.by_pair.get((contact, inmate))

    def approved(self, contact: str, inmate: str) -> bool:
        return self.by_pair.get((contact, inmate)) == "approved"

    def __len__(self) -> int:
        return len(self.by_pair)
