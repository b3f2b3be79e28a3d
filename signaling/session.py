"""A session: one participant's (or monitor's) live WebSocket plus its server-side peer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from policy.actor import Actor
from policy.directive import Directive
from policy.store import SessionRecord
from policy.visit import Visit
from relay import PeerClosed, RelayPeer

log = logging.getLogger("parlor.session")


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
    ended: bool = False
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
        return {"id": self.id, "role": self.role, "name": self.name}

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
        self.offer_outstanding = True
        self.renegotiate_again = False
        try:
            sdp = await self.peer.create_offer()
        except PeerClosed:  # it is being torn down; its own handler ends the session
            self.offer_outstanding = False
            return
        await self.send({"type": "offer", "sdp": sdp})
