"""Directives: an operator's time-limited, reasoned order restricting calls (SPEC §4).

`DirectiveIndex` is the in-memory view every admission consults: a map from scope key to
the directives in force for it, so evaluating a session costs one lookup per subject key.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from policy.errors import Malformed
from policy.rfc3339 import format_time, parse_time
from policy.roster import check_id

ACTIONS = ("suspend", "end", "audio-only")
# `pending`: a broad directive waiting for a second supervisor before it starts (issued with
# `await_confirmation` once its scope's unconfirmed time was used up, policy/coverage.py).
# It is in force nowhere: it matches no session and refuses no admission.
STATUSES = ("pending", "active", "lifted", "expired", "lapsed")
SCOPE_KINDS = ("system", "facility", "device", "inmate", "contact", "pair", "visit")
BROAD_KINDS = ("system", "facility")


def parse_scope(value: object) -> str:
    """Validate a scope key and return it in canonical form."""
    if not isinstance(value, str) or not value:
        raise Malformed("bad-scope", "scope is required, e.g. 'contact:C1' or 'facility:F1'")
    parts = value.split(":")
    kind = parts[0]
    if kind not in SCOPE_KINDS:
        raise Malformed(
            "bad-scope", f"unknown scope kind {kind!r}; one of {', '.join(SCOPE_KINDS)}"
        )
    expected = {"system": 0, "pair": 2}.get(kind, 1)
    if len(parts) - 1 != expected:
        shape = {"system": "system", "pair": "pair:<inmate>:<contact>"}.get(kind, f"{kind}:<id>")
        raise Malformed("bad-scope", f"scope {value!r} must look like {shape}")
    for part in parts[1:]:
        check_id(part, "scope id")
    return value


def scope_kind(scope: str) -> str:
    return scope.split(":", 1)[0]


def is_broad(scope: str) -> bool:
    """Broad scopes lapse unless a second supervisor confirms them."""
    return scope_kind(scope) in BROAD_KINDS


@dataclass(frozen=True)
class Directive:
    id: str
    scope: str
    action: str
    reason: str
    legal_basis: str
    issued_by: str
    issued_at: float
    starts_at: float
    expires_at: float
    status: str = "active"
    confirm_by: float | None = None  # broad directives lapse at this moment unless confirmed
    confirmed_by: str | None = None
    confirmed_at: float | None = None
    closed_at: float | None = None  # when it was lifted, expired or lapsed
    closed_by: str | None = None
    close_reason: str | None = None
    sessions_ended: int = 0
    # Issued as a request: it starts only when a second supervisor confirms it (`pending` until
    # then). Never unconfirmed coverage of its scope: unconfirmed, it was in force nowhere.
    starts_on_confirmation: bool = False

    @property
    def broad(self) -> bool:
        return is_broad(self.scope)

    @property
    def progress(self) -> int:
        """How far along its life it is: 0 issued (active or pending), 1 confirmed, 2 closed
        (lifted, expired or lapsed). A directive only moves forward, so a copy with less progress
        is older."""
        if self.status not in ("active", "pending"):
            return 2
        return 1 if self.confirmed_by is not None else 0

    def in_force(self, now: float) -> bool:
        return self.status == "active" and self.starts_at <= now < self.expires_at

    def with_changes(self, **changes: Any) -> Directive:
        return replace(self, **changes)

    def to_json(self, *, appeal_base: str = "") -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "scope_kind": scope_kind(self.scope),
            "broad": self.broad,
            "action": self.action,
            "reason": self.reason,
            "legal_basis": self.legal_basis,
            "issued_by": self.issued_by,
            "issued_at": format_time(self.issued_at),
            "starts_at": format_time(self.starts_at),
            "expires_at": format_time(self.expires_at),
            "status": self.status,
            "confirm_by": format_time(self.confirm_by),
            "confirmed_by": self.confirmed_by,
            "confirmed_at": format_time(self.confirmed_at),
            "closed_at": format_time(self.closed_at),
            "closed_by": self.closed_by,
            "close_reason": self.close_reason,
            "sessions_ended": self.sessions_ended,
            "starts_on_confirmation": self.starts_on_confirmation,
            "appeal_url": f"{appeal_base}/appeal/{self.id}",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Directive:
        """The inverse of `to_json` (the derived fields are ignored): how a node reads a
        directive that another node announced on the bus."""

        def moment(name: str) -> float:
            return parse_time(data[name], name)

        def maybe(name: str) -> float | None:
            return None if data.get(name) is None else moment(name)

        return cls(
            id=str(data["id"]), scope=str(data["scope"]), action=str(data["action"]),
            reason=str(data["reason"]), legal_basis=str(data["legal_basis"]),
            issued_by=str(data["issued_by"]), issued_at=moment("issued_at"),
            starts_at=moment("starts_at"), expires_at=moment("expires_at"),
            status=str(data["status"]), confirm_by=maybe("confirm_by"),
            confirmed_by=data.get("confirmed_by"), confirmed_at=maybe("confirmed_at"),
            closed_at=maybe("closed_at"), closed_by=data.get("closed_by"),
            close_reason=data.get("close_reason"), sessions_ended=int(data.get("sessions_ended") or 0),
            starts_on_confirmation=data.get("starts_on_confirmation") is True,
        )  # fmt: skip

    def notice(self, *, appeal_base: str = "") -> dict[str, Any]:
        """What an affected person is told: SPEC §4 'the people affected are told'."""
        return {
            "id": self.id,
            "action": self.action,
            "reason": self.reason,
            "legal_basis": self.legal_basis,
            "expires_at": format_time(self.expires_at),
            "appeal_url": f"{appeal_base}/appeal/{self.id}",
        }


@dataclass
class Decision:
    """The outcome of evaluating one session's subject keys against the directives in force."""

    admitted: bool
    blocking: Directive | None = None  # the suspend directive that refuses admission
    audio_only: Directive | None = None  # a directive restricting the session to audio

    @property
    def restricted(self) -> bool:
        return self.audio_only is not None


@dataclass
class DirectiveIndex:
    """Active directives by scope key. Holds only `active` ones; status changes replace them.
    `pending` ones (waiting for a second supervisor) are kept apart, for their deadline only.

    A directive's state only moves forward here (`Directive.progress`): a copy older than what
    the index has seen of it is ignored. Copies arrive out of order in a cluster: a node may
    lift (or confirm) a directive before its bus delivers the announcement of its issue, whose
    copy would otherwise put it back as active (or unconfirmed, and then lapse it).
    """

    by_scope: dict[str, dict[str, Directive]] = field(default_factory=lambda: defaultdict(dict))
    by_id: dict[str, Directive] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)  # the furthest each has got, by id
    pending: dict[str, Directive] = field(default_factory=dict)  # waiting to be confirmed, by id

    def put(self, directive: Directive) -> bool:
        """Take `directive`'s state unless a later one is known; whether it was taken."""
        if directive.progress < self.progress.get(directive.id, 0):
            return False
        self.progress[directive.id] = directive.progress
        self.discard(directive.id)
        if directive.status == "active":
            self.by_scope[directive.scope][directive.id] = directive
            self.by_id[directive.id] = directive
        elif directive.status == "pending":  # only its deadline: it matches nothing
            self.pending[directive.id] = directive
        return True

    def discard(self, directive_id: str) -> None:
        self.pending.pop(directive_id, None)
        old = self.by_id.pop(directive_id, None)
        if old is not None:
            bucket = self.by_scope.get(old.scope)
            if bucket is not None:
                bucket.pop(directive_id, None)
                if not bucket:
                    del self.by_scope[old.scope]

    def active(self) -> list[Directive]:
        return list(self.by_id.values())

    def evaluate(self, keys: tuple[str, ...] | list[str], now: float) -> Decision:
        """One dictionary lookup per subject key: O(keys), whatever the number of directives.

        `end` directives do not block later admissions (SPEC §4), so only `suspend` refuses.
        When several apply, the one that expires last is reported: it is the binding one.
        """
        blocking: Directive | None = None
        audio_only: Directive | None = None
        for key in keys:
            for directive in self.by_scope.get(key, {}).values():
                if not directive.in_force(now):
                    continue
                if directive.action == "suspend":
                    if blocking is None or directive.expires_at > blocking.expires_at:
                        blocking = directive
                elif directive.action == "audio-only":
                    if audio_only is None or directive.expires_at > audio_only.expires_at:
                        audio_only = directive
        return Decision(admitted=blocking is None, blocking=blocking, audio_only=audio_only)

    def due(self, now: float) -> list[Directive]:
        """Directives whose expiry or confirmation deadline has passed (pending ones too)."""
        return [
            d
            for d in [*self.by_id.values(), *self.pending.values()]
            if d.expires_at <= now
            or (d.confirm_by is not None and d.confirmed_by is None and d.confirm_by <= now)
        ]

    def next_deadline(self) -> float | None:
        """The next moment a directive starts, expires or lapses."""
        moments = [d.expires_at for d in self.by_id.values()]
        moments += [d.starts_at for d in self.by_id.values()]
        moments += [
            d.confirm_by
            for d in [*self.by_id.values(), *self.pending.values()]
            if d.confirm_by is not None and d.confirmed_by is None
        ]
        return min(moments) if moments else None
