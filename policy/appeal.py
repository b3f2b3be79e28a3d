"""An appeal: an affected person's request that a directive be reviewed (SPEC §4).

It is filed by the family member a directive matched and decided by an operator or
supervisor other than the directive's issuer, who upholds the directive or lifts it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Appeal:
    id: str
    directive: str
    filed_by: str
    text: str
    filed_at: float
    # open | upheld | lifted | superseded (a duplicate from before one-open-appeal-per-person)
    status: str = "open"
    decided_by: str | None = None
    decided_at: float | None = None
    decision_note: str | None = None
