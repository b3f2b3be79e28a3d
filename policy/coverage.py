"""How long a broad scope has been restricted without a second supervisor (SPEC §4).

"One person cannot keep a broad scope restricted alone: on any one `system` or `facility:F`
scope, unconfirmed broad directives may cover at most the confirmation window in any 24
hours; past that, a new unconfirmed one is refused (422 `confirmation-required`) until a
second supervisor confirms."

How it is counted (`coverage`), for one scope at the moment `now`:

- What counts: every directive on exactly that scope that was never confirmed, whoever
  issued it (two colluding operators are still no second supervisor) and whatever became of
  it (lifted, lapsed and expired ones included). A request that starts only when a second
  supervisor confirms it (`Directive.starts_on_confirmation`, status `pending` until then)
  never counts: unconfirmed, it was in force nowhere. Each covers the time it was in force:
  from `starts_at` to `closed_at`; an active one up to the moment it lapses unless confirmed
  (`confirm_by`, or its expiry if sooner): issuing it already spent that time.
- Overlapping directives are counted once (the union of their intervals): two stops of one
  facility at once restrict it once.
- Over the trailing 24 hours (`WINDOW`), or since the last confirmation of a directive on
  that scope if that is later. A confirmation is the second supervisor's "yes, this scope
  needs restricting": it starts the count again, so after it one person can again add at
  most one window of unconfirmed time — the same bound as before, after every two-person
  decision. It is not a pass for later directives: they are unconfirmed and counted.

What a new unconfirmed directive gets: it may stay unconfirmed only as long as keeps the
union within the budget (the confirmation window). Walking forward from its start, time
already covered by active unconfirmed directives is free (it rides along with them: a
second stop issued beside a first lapses with it), uncovered time spends what is left. Its
`confirm_by` is where the budget runs out, at most one window after it starts (for one
issued to start later, the window runs from its start: it is unconfirmed coverage in force
that is bounded, and a second supervisor has until then and a window more). When that
leaves less than `Rules.min_unconfirmed_seconds` (a minute; less if the window is shorter)
for a second supervisor to act, it is refused `confirmation-required`; `free_at` says when a
new one could be issued again as the old time leaves the 24 hours (unless a confirmation
comes first). A confirmed directive needs none of this. Refused, the issuer may make it a
request instead (`await_confirmation`): it waits, `pending`, for a second supervisor, and
starts when they confirm it (policy/service.py `Policy.issue`).

Across nodes: the count is made from the store's directives, not one node's memory. Two
directives issued at once on two nodes may both pass on the same count, but then they start
together and overlap: the union grows by at most the time between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from policy.directive import Directive
from policy.rfc3339 import format_time

WINDOW = 24 * 3600.0  # "in any 24 hours"


@dataclass(frozen=True)
class Coverage:
    """One broad scope's unconfirmed coverage at `now`, and what a new directive would get."""

    scope: str
    now: float
    since: float  # what counts starts here: 24 h ago, or the last confirmation if later
    used: float  # seconds of unconfirmed coverage since then (active ones up to their lapse)
    budget: float  # the confirmation window
    lapse_at: float | None  # a new unconfirmed directive would lapse then; None: refused
    free_at: float | None  # refused: when one could be issued again (no confirmation coming)
    unconfirmed_active: tuple[str, ...]  # ids of active unconfirmed directives on the scope
    awaiting: tuple[str, ...] = ()  # ids of requests on the scope waiting for a confirmation

    @property
    def refused(self) -> bool:
        return self.lapse_at is None

    @property
    def available(self) -> float:
        """How long a new unconfirmed directive issued now could stay unconfirmed."""
        return 0.0 if self.lapse_at is None else max(0.0, self.lapse_at - self.now)

    def refusal(self) -> str:
        """Why a new unconfirmed directive is refused, and what can be done, in plain words."""
        text = (
            f"{self.scope} has been restricted for {_length(self.used)} without a second "
            f"supervisor's confirmation in the last 24 hours, and {_length(self.budget)} is the "
            "most allowed, so a new broad directive on it needs a confirmation first."
        )
        if self.unconfirmed_active:
            text += f" Ask a second supervisor to confirm {', '.join(self.unconfirmed_active)}."
        if self.awaiting:
            text += f" Waiting for a second supervisor already: {', '.join(self.awaiting)}."
        if self.free_at is not None:
            when = datetime.fromtimestamp(math.ceil(self.free_at / 60) * 60, tz=UTC)
            text += f" Without one, it can be restricted again from {when:%Y-%m-%d %H:%M} UTC."
        return text + " Targeted directives (a kiosk, an inmate, a visit, a contact) need none."

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "window_seconds": WINDOW,
            "since": format_time(self.since),
            "budget_seconds": self.budget,
            "used_seconds": round(self.used, 3),
            "available_seconds": round(self.available, 3),
            "lapse_at": format_time(self.lapse_at),
            "refused": self.refused,
            "free_at": format_time(self.free_at),
            "unconfirmed_active": list(self.unconfirmed_active),
            "awaiting_confirmation": list(self.awaiting),
            "message": self.refusal() if self.refused else None,
        }


def coverage(
    directives: Iterable[Directive],
    scope: str,
    now: float,
    *,
    budget: float,
    minimum: float,
    starts_at: float | None = None,
) -> Coverage:
    """Count `scope`'s unconfirmed coverage at `now` from `directives` (any, of any scope:
    the others are ignored), and decide what a new unconfirmed directive starting at
    `starts_at` (default now) would get. Pure: everything it needs is in its arguments."""
    here = [d for d in directives if d.scope == scope]
    confirmations = [d.confirmed_at for d in here if d.confirmed_at is not None]
    since = max([now - WINDOW, *(t for t in confirmations if t <= now)])
    mine = [d for d in here if not d.starts_on_confirmation]  # requests are never in force alone
    spans = _union(_span(d, since) for d in mine if d.confirmed_by is None)
    used = sum(end - start for start, end in spans)
    start = now if starts_at is None else max(now, starts_at)
    lapse_at = min(_budget_ends(spans, start, budget - used), start + budget)
    refused = lapse_at - start < min(minimum, budget)
    active = tuple(sorted(d.id for d in mine if d.status == "active" and d.confirmed_by is None))
    return Coverage(
        scope=scope, now=now, since=since, used=used, budget=budget,
        lapse_at=None if refused else lapse_at,
        free_at=_free_at(spans, used, budget - min(minimum, budget)) if refused else None,
        unconfirmed_active=active,
        awaiting=tuple(sorted(d.id for d in here if d.status == "pending")),
    )  # fmt: skip


def _span(directive: Directive, since: float) -> tuple[float, float]:
    """The time `directive` was (or, while active and unconfirmed, will be) in force, from
    `since` on: (start, end), empty when end <= start."""
    if directive.status == "active" or directive.closed_at is None:
        end = min(directive.confirm_by or directive.expires_at, directive.expires_at)
    else:
        end = directive.closed_at
    return max(directive.starts_at, since), end


def _union(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge intervals, in order; empty ones are dropped."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _budget_ends(spans: list[tuple[float, float]], start: float, left: float) -> float:
    """Walk forward from `start`: covered time is free, uncovered time spends `left`; return
    where it runs out."""
    at = start
    for span_start, span_end in spans:
        if span_end <= at:
            continue
        if span_start > at:
            gap = span_start - at
            if gap >= left:
                return at + max(0.0, left)
            left -= gap
        at = span_end
    return at + max(0.0, left)


def _free_at(spans: list[tuple[float, float]], used: float, target: float) -> float:
    """When, as the 24 hours move on, at most `target` seconds of `spans` are still inside
    them: the moment the earliest covered time has left the window."""
    excess = used - target
    for span_start, span_end in spans:
        length = span_end - span_start
        if excess <= length:
            return span_start + max(0.0, excess) + WINDOW
        excess -= length
    return spans[-1][1] + WINDOW if spans else 0.0


def _length(seconds: float) -> str:
    """'40 seconds', '15 minutes', '1 hour 5 minutes'."""

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    if seconds < 60:
        return plural(max(0, round(seconds)), "second")
    minutes = round(seconds / 60)
    if minutes < 60:
        return plural(minutes, "minute")
    hours, minutes = divmod(minutes, 60)
    return plural(hours, "hour") + (f" {plural(minutes, 'minute')}" if minutes else "")
