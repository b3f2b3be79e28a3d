"""A session: one participant's (or monitor's) live WebSocket plus its server-side peer.

A session is in the live-session index from the moment its admission decided to admit it,
before it is told: until its `joined` is sent it is *provisional* (`joined` False), and
whoever ends it then (a directive, a newer session of the same identity, the visit's end)
leaves telling the client to its admission, which refuses it (signaling/admission.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from policy.actor import Actor
from policy.directive import Directive
from policy.guardian import ACTIVE, Ward
from policy.session import SessionRecord
from policy.visit import Visit
from relay import PeerClosed, RelayPeer
from signaling.protocol import Message

log = logging.getLogger("parlor.session")


@dataclass(frozen=True)
class Ending:
    """Why and how a session ended: its recorded reason, the close code, the directive that
    ended it (if one did) and what its person is told."""

    reason: str
    code: int
    message: str
    directive: Directive | None = None


@dataclass(eq=False)
class Session:
    id: str
    visit: Visit
    actor: Actor
    mode: str  # "participant" or "monitor"
    keys: tuple[str, ...]
    name: str
    ws: web.WebSocketResponse
    peer: RelayPeer
    record: SessionRecord
    audio_only: Directive | None = None
    ward: Ward | None = None  # a minor: who of their guardians is on the visit
    guardian_state: str = ACTIVE  # a minor's: active, waiting or paused (policy/guardian.py)
    paused_at: float | None = None  # when a minor was paused (their grace runs from here)
    grace: asyncio.TimerHandle | None = None  # ends a paused minor's session
    guardian_news: asyncio.Future[None] | None = None  # the last change being told/recorded
    started: asyncio.Future[None] | None = None  # the write of its start record
    joined: bool = False  # told `joined`: no longer provisional
    announced: bool = False  # the others were told `participant-joined`
    ended: bool = False
    ending: Ending | None = None
    negotiated: bool = False  # the client's first offer was answered and the peer wired in
    offer_outstanding: bool = False  # a server offer awaits the client's answer
    renegotiate_again: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def role(self) -> str:
        return self.actor.role

    @property
    def identity(self) -> tuple[str, str, str]:
        """A newer session of the same identity replaces this one (close 4409)."""
        return (self.actor.sub, self.visit.id, self.mode)

    @property
    def monitor(self) -> bool:
        return self.mode == "monitor"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "role": self.role, "name": self.name, "minor": self.ward is not None,
            "state": self.guardian_state,
        }  # fmt: skip

    async def start_recorded(self) -> bool:
        """Whether its start record is written, waiting for the write if it is under way.

        A session whose start was never recorded has no end to record, and a directive does
        not count it among the sessions it ended."""
        if self.started is None:
            return False
        try:
            await asyncio.shield(self.started)
        except asyncio.CancelledError:
            if not self.started.cancelled():
                raise  # it is the caller that is being cancelled
            return False
        except Exception:  # the admission refuses it (`unavailable`)
            return False
        return True

    async def send(self, message: dict[str, Any]) -> bool:
        """Send a JSON message; a peer that went away is not an error for anyone else."""
        if self.ws.closed:
            return False
        try:
            await self.ws.send_json(message)
            return True
        except (ConnectionError, RuntimeError) as exc:
            log.debug("send to session %s failed: %s", self.id, exc)
            return False

    async def renegotiate(self) -> None:
        """Send a server offer; if one is outstanding, send another once it is answered."""
        if self.ended or not self.negotiated:
            return
        if self.offer_outstanding:
            self.renegotiate_again = True
            return
        self.renegotiate_again = False
        if not self.peer.offer_needed:  # e.g. its answer carried what changed (relay/peer.py)
            return
        self.offer_outstanding = True
        try:
            sdp = await self.peer.create_offer()
        except PeerClosed:  # it is being torn down; its own handler ends the session
            self.offer_outstanding = False
            return
        await self.send({"type": Message.OFFER, "sdp": sdp})
