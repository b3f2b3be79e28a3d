"""Room: the forwarding graph of one visit.

Every publishing peer's tracks go to every other peer of the room (a
receive-only peer, such as a staff monitor, receives all and sends nothing).
Wiring and unwiring are synchronous, so the caller knows the graph is in
place the moment ``add``/``remove`` return; what reaches the clients'
SDP is left to the server offers the caller then sends to the returned
peers (one outstanding offer per peer, see ``RelayPeer.create_offer``).
"""

from __future__ import annotations

from relay.codec import VisitCodec
from relay.peer import RelayPeer
from relay.stats import combined


class Room:
    """One visit's peers and who forwards to whom."""

    def __init__(self, visit_id: str, *, codec: str = "VP8") -> None:
        self.visit_id = visit_id
        self.codec = VisitCodec.named(codec)
        self._peers: dict[str, RelayPeer] = {}

    @property
    def peers(self) -> list[RelayPeer]:
        return list(self._peers.values())

    def add(self, peer: RelayPeer) -> list[RelayPeer]:
        """Wire ``peer`` to everyone in the room.

        Call after ``peer.accept_offer`` (what a peer publishes is known from
        its offer). Returns the peers that gained outbound tracks and need a
        server offer, ``peer`` first. A peer id already in the room must be
        removed first (a replaced session) or ValueError is raised.
        """
        if peer.codec != self.codec:
            raise ValueError(
                f"peer {peer.peer_id} uses {peer.codec.name}, visit {self.visit_id} "
                f"uses {self.codec.name}"
            )
        existing = self._peers.get(peer.peer_id)
        if existing is peer:
            return []
        if existing is not None:
            raise ValueError(f"peer {peer.peer_id} is already in visit {self.visit_id}")
        changed: list[RelayPeer] = []
        gained = [peer.subscribe_to(other) for other in self._peers.values()]
        if any(gained):
            changed.append(peer)
        for other in self._peers.values():
            if other.subscribe_to(peer):
                changed.append(other)
        self._peers[peer.peer_id] = peer
        return changed

    def remove(self, peer: RelayPeer) -> list[RelayPeer]:
        """Unwire ``peer`` now; return the peers that need a server offer.

        Nothing is forwarded between ``peer`` and the room once this returns.
        It does not close ``peer``.
        """
        if self._peers.get(peer.peer_id) is not peer:
            return []
        del self._peers[peer.peer_id]
        changed = []
        for other in self._peers.values():
            peer.unsubscribe_from(other.peer_id)
            if other.unsubscribe_from(peer.peer_id):
                changed.append(other)
        return changed

    def stats(self) -> dict:
        """The room's counters: the sum over its current peers."""
        return {
            "visit_id": self.visit_id,
            "codec": self.codec.name,
            "peers": len(self._peers),
            **combined([peer.counters for peer in self._peers.values()]).as_dict(),
        }
