"""The live sessions of this node, indexed the ways enforcement needs them.

`by_key` maps every subject key to the live sessions that carry it, so a directive finds its
matching sessions with one lookup instead of scanning every session (SPEC §4).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from policy.visit import Visit
from relay import RelayPeer, Room
from signaling.session import Session

if TYPE_CHECKING:
    from signaling.recordings import LiveRecording


@dataclass(eq=False)
class Call:
    """One visit's live state on this node: its sessions and the relay room between them."""

    visit: Visit
    room: Room
    names: dict[str, str]  # subject (e.g. contact:C1) -> display name
    sessions: set[Session] = field(default_factory=set)
    warned: set[int] = field(default_factory=set)  # time-remaining thresholds already sent
    recorded: bool = False  # its facility records its visit (decided when the call was made)
    recording: LiveRecording | None = None  # while it is recorded (signaling/recordings.py)

    def participants(self) -> list[Session]:
        """Live participants, provisional ones included (what a visit's capacity counts)."""
        return [s for s in self.sessions if not s.monitor and not s.ended]

    def joined(self) -> list[Session]:
        """Live sessions that were told `joined`: the ones that hear of others coming and going."""
        return [s for s in self.sessions if s.joined and not s.ended]

    def session_of(self, peer: RelayPeer) -> Session | None:
        return next((s for s in self.sessions if s.peer is peer), None)


@dataclass
class LiveSessions:
    by_id: dict[str, Session] = field(default_factory=dict)
    by_key: dict[str, set[Session]] = field(default_factory=lambda: defaultdict(set))
    by_identity: dict[tuple[str, str, str], Session] = field(default_factory=dict)
    by_sub: dict[str, set[Session]] = field(default_factory=lambda: defaultdict(set))
    calls: dict[str, Call] = field(default_factory=dict)
    ended: int = 0  # sessions removed since start (signaling.memory trims after they end)

    def add(self, session: Session, call: Call) -> Session | None:
        """Register a session (and its call, if the visit has none here yet); return the older
        session of the same identity it replaces."""
        call = self.calls.setdefault(session.visit.id, call)
        replaced = self.by_identity.get(session.identity)
        self.by_id[session.id] = session
        self.by_identity[session.identity] = session
        self.by_sub[session.actor.sub].add(session)
        for key in session.keys:
            self.by_key[key].add(session)
        call.sessions.add(session)
        return replaced

    def remove(self, session: Session) -> Call | None:
        """Unregister (synchronously); return the session's call, dropped when it empties."""
        if self.by_id.pop(session.id, None) is not None:
            self.ended += 1
        if self.by_identity.get(session.identity) is session:
            del self.by_identity[session.identity]
        mine = self.by_sub.get(session.actor.sub)
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self.by_sub[session.actor.sub]
        for key in session.keys:
            bucket = self.by_key.get(key)
            if bucket is not None:
                bucket.discard(session)
                if not bucket:
                    del self.by_key[key]
        call = self.calls.get(session.visit.id)
        if call is not None:
            call.sessions.discard(session)
            if not call.sessions:
                del self.calls[session.visit.id]
        return call

    def would_exceed(self, identity: tuple[str, str, str], limit: int) -> bool:
        """Would a new session of `identity` (`Session.identity`) give its subject more than
        `limit` live sessions? Replacing the subject's own session adds none."""
        return identity not in self.by_identity and len(self.by_sub.get(identity[0], ())) >= limit

    def matching(self, scope: str) -> list[Session]:
        return list(self.by_key.get(scope, ()))

    def __len__(self) -> int:
        return len(self.by_id)
