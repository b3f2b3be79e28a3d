"""Minors only with their guardian (SPEC §4 "Minors", issue #17 item 5): the rules, pure.

A contact with `minor: true` has one or more guardians: contacts who are not minors
themselves (`check_guardians`). A visit with a minor is booked only with a guardian of
theirs on the same visit (`check_booking`, 422 `guardian-required`). Live, a minor's
session is in one of three states, decided from who is in the call now:

- *with a guardian* (`ACTIVE`): media flows as for anyone else;
- `WAITING`: admitted to the socket but held back, since no guardian of theirs has joined
  yet: no media to or from the minor;
- `PAUSED`: a guardian was there and the last one left: no media either way, and the
  session ends (`guardian-left`) after a grace period unless a guardian returns.

`step` is the state machine; `present` says which guardians count. Only a guardian whose
own session is live and joined counts, and only one no directive blocks and whose approval
for the inmate stands (`eligible`): a suspended guardian cannot be the one who lets a minor
in. signaling/admission.py decides the first state in the admission's synchronous block, and
signaling/enforcer.py steps every minor of a call when someone joins or leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from policy.errors import Malformed, RuleBroken

ACTIVE = "active"
WAITING = "waiting"
PAUSED = "paused"
MAX_GUARDIANS = 4
DEFAULT_GRACE_SECONDS = 60.0
GUARDIANS_SET = "contact.guardians-set"  # the audit event that sets a minor's guardians


@dataclass(frozen=True)
class Ward:
    """A minor on one visit, and the guardians of theirs booked on the same visit."""

    contact: str
    guardians: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """Where a minor's session goes when the people in the call change: its new state and
    the change to record (`held`, `admitted`, `paused`, `resumed`; None: no change)."""

    state: str
    change: str | None


def check_guardians(
    minor: str, is_minor: bool, guardians: object, known: dict[str, bool]
) -> tuple[str, ...]:
    """The guardians to set for contact `minor` (sorted), or why not. `known` maps every
    named guardian that exists to its own `minor` flag. An empty list clears them."""
    if not isinstance(guardians, list) or not all(isinstance(g, str) for g in guardians):
        raise Malformed("bad-field", "guardians must be a list of contact ids")
    if len(set(guardians)) != len(guardians):
        raise Malformed("duplicate-guardian", "guardians must not repeat")
    if guardians and not is_minor:
        raise RuleBroken(
            "not-a-minor", f"contact {minor} is not a minor: only minors have guardians"
        )
    if len(guardians) > MAX_GUARDIANS:
        raise RuleBroken("too-many-guardians", f"a minor has at most {MAX_GUARDIANS} guardians")
    for guardian in guardians:
        if guardian == minor:
            raise RuleBroken("own-guardian", "a minor cannot be their own guardian")
        if guardian not in known:
            raise RuleBroken("unknown-guardian", f"no contact {guardian!r}")
        if known[guardian]:
            raise RuleBroken(
                "guardian-is-minor", f"contact {guardian} is a minor: a guardian is an adult"
            )
    return tuple(sorted(guardians))


def ward_of(
    contact: str, is_minor: bool, guardians: tuple[str, ...], visit_contacts: Iterable[str]
) -> Ward | None:
    """The minor `contact` on a visit with `visit_contacts` (None: not a minor)."""
    if not is_minor:
        return None
    on_visit = set(visit_contacts)
    return Ward(contact, tuple(g for g in guardians if g in on_visit))


def check_booking(wards: Iterable[Ward], names: dict[str, str]) -> None:
    """A visit with a minor is booked only with a guardian of theirs on it (else 422
    `guardian-required`): a call the minor could never be let into is refused up front."""
    for ward in wards:
        if not ward.guardians:
            raise RuleBroken(
                "guardian-required",
                f"{names.get(ward.contact, ward.contact)} is a minor: add one of their guardians "
                "to the visit (set guardians on the contact first if they have none)",
            )


def may_wait(ward: Ward, approved: Callable[[str], bool]) -> bool:
    """Can any guardian of this minor on the visit still come? False when every one of them
    has been denied or withdrawn for the inmate: then the minor is refused, not held."""
    return any(approved(g) for g in ward.guardians)


def present(ward: Ward, in_call: Iterable[str], eligible: Callable[[str], bool]) -> tuple[str, ...]:
    """The minor's guardians in the call now: those of `ward.guardians` among `in_call` (the
    contacts with a joined, live session in the call) that are `eligible` (no directive
    blocks them, their approval stands)."""
    here = set(in_call)
    return tuple(g for g in ward.guardians if g in here and eligible(g))


def first(guardian_present: bool) -> Step:
    """The state a minor's session is admitted in."""
    return Step(ACTIVE, "admitted") if guardian_present else Step(WAITING, "held")


def step(state: str, guardian_present: bool) -> Step:
    """The next state of a minor's session now that a guardian is (or is not) in the call."""
    if state == ACTIVE:
        return Step(ACTIVE, None) if guardian_present else Step(PAUSED, "paused")
    if state == WAITING:
        return Step(ACTIVE, "admitted") if guardian_present else Step(WAITING, None)
    if state == PAUSED:
        return Step(ACTIVE, "resumed") if guardian_present else Step(PAUSED, None)
    raise ValueError(f"unknown state {state!r}")


def grace_left(paused_at: float, now: float, grace_seconds: float) -> float:
    """Seconds until a paused minor's session ends (0: it ends now)."""
    return max(0.0, paused_at + grace_seconds - now)
