"""The audit chain: append-only events, each sealed with the SHA-256 of its predecessor.

The hash covers a canonical JSON form (sorted keys, no spaces, UTF-8), so any store that
returns the same values recomputes the same chain. Editing, inserting or deleting a row
breaks the chain at that row, and `verify_chain` names the first bad sequence number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy.rfc3339 import format_time

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    at: str  # RFC 3339 with microseconds: part of the sealed form, so kept as text
    actor: str
    action: str
    subject: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def seal(
    seq: int, at: str, actor: str, action: str, subject: str, data: dict[str, Any], prev_hash: str
) -> str:
    body = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "data": data,
        "prev": prev_hash,
    }
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def audit_time(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_bad: int | None
    head: tuple[int, str] = (0, GENESIS)  # the last event verified: (seq, hash)
    anchors: int = 0  # externally recorded (seq, hash) pairs the chain was checked against

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_bad": self.first_bad,
            "head": {"seq": self.head[0], "hash": self.head[1]},
            "anchors_checked": self.anchors,
        }


def verify_chain(
    events: Iterable[AuditEvent],
    head: tuple[int, str] | None = None,
    anchors: Mapping[int, str] | None = None,
) -> ChainReport:
    """Recompute every link; report the first event whose seal or link does not hold.

    `head` is the store's record of the last event (seq, hash). Without it, deleting the newest
    events, or appending a correctly sealed one, leaves a chain that is consistent in itself.

    The chain has no key: whoever can write the database could rewrite history and seal it
    again. `anchors` ({seq: hash}, recorded outside the database, e.g. a report's printed head)
    catch that: a rewritten event changes the hash of every event after it.
    """
    anchors = dict(anchors or {})
    checked = len(anchors)
    prev = GENESIS
    expected_seq = 1
    count = 0
    first_bad: int | None = None
    for event in events:
        count += 1
        recomputed = seal(
            event.seq, event.at, event.actor, event.action, event.subject, event.data, prev
        )
        broken = event.seq != expected_seq or event.prev_hash != prev or event.hash != recomputed
        anchored = anchors.pop(event.seq, event.hash)
        if (broken or anchored != event.hash) and first_bad is None:
            first_bad = event.seq
        prev = event.hash
        expected_seq = event.seq + 1
    last_seq = expected_seq - 1
    if head is not None and first_bad is None and (last_seq, prev) != tuple(head):
        # Same length, different hash: the last event was replaced. Otherwise the first event
        # missing from the chain (truncated) or the first beyond the head (appended).
        first_bad = head[0] if last_seq == head[0] else min(last_seq, head[0]) + 1
    if anchors and first_bad is None:  # anchored events that are no longer there
        first_bad = min(anchors)
    return ChainReport(
        ok=first_bad is None,
        events=count,
        first_bad=first_bad,
        head=(last_seq, prev),
        anchors=checked,
    )


__all__ = [
    "AuditEvent",
    "ChainReport",
    "GENESIS",
    "audit_time",
    "format_time",
    "seal",
    "verify_chain",
]
