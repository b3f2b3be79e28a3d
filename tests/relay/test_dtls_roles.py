"""The DTLS role of a relay peer is chosen once and never flips (issue #11).

Under BUNDLE one DTLS transport carries every m-line. aiortc re-derives its role from each
m-line of every answer, so Firefox's answer to a server re-offer, with mixed roles per m-line,
flipped the transport mid-handshake and the call had no media. These tests make the relay's
peers negotiate the way signaling does (the server re-offers right after answering, before
DTLS has finished) against real aiortc clients.
"""

from __future__ import annotations

import asyncio
import re

from aiortc import RTCSessionDescription

from tests.relay.conftest import Client, Visit

SETUP = re.compile(r"^a=setup:(\w+)", re.MULTILINE)


def setups(sdp: str) -> list[str]:
    return SETUP.findall(sdp)


def with_setups(sdp: str, roles: list[str]) -> str:
    """``sdp`` with the m-lines' ``a=setup`` values replaced, in order."""
    values = iter(roles)
    return SETUP.sub(lambda _: f"a=setup:{next(values)}", sdp)


async def test_the_relay_answers_passive_and_its_re_offers_keep_that_role(visit: Visit) -> None:
    client, peer = await visit.join("A")
    answer = peer.connection.localDescription.sdp
    assert setups(answer) and set(setups(answer)) == {"passive"}
    assert peer.dtls_role == "server"
    await visit.join("B")  # A gains B's tracks: the relay re-offers to A
    offer = visit.peers["A"].connection.localDescription.sdp
    assert len(setups(offer)) == 4 and set(setups(offer)) == {"passive"}
    await visit.wait_for(lambda: visit.everyone_gets_everyone("video", 5))
    assert client.pc.connectionState == "connected"


async def test_an_answer_with_mixed_roles_per_m_line_cannot_flip_the_transport() -> None:
    """Firefox-style: the answer to the server's re-offer names other roles on some m-lines.
    Sent before the handshake finished, as in the field; media must flow both ways anyway."""
    for _ in range(3):
        visit = Visit()
        try:
            await visit.join("A")
            b = Client("B")
            peer_b = await _join_with_mixed_answer(visit, b)
            assert peer_b.dtls_role == "server"
            await visit.wait_for(lambda v=visit: v.everyone_gets_everyone("video", 5), timeout=15)
        finally:
            await visit.close()


async def _join_with_mixed_answer(visit: Visit, client: Client):  # type: ignore[no-untyped-def]
    """Join ``client`` as visit.join does, but every answer it sends to the relay claims
    ``active, active, passive, passive``; its own transport keeps its real role."""
    from relay import RelayPeer

    peer = RelayPeer(client.name, codec=visit.codec, ice_servers=[], totals=visit.totals)
    visit.clients[client.name] = client
    visit.peers[client.name] = peer
    await client.pc.setLocalDescription(await client.pc.createOffer())
    answer = await peer.accept_offer(client.pc.localDescription.sdp)
    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    changed = visit.room.add(peer)
    for other in changed:
        if other is not peer:
            await visit.renegotiate(other)
    offer = await peer.create_offer()  # right after the answer: DTLS has not finished
    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await client.pc.setLocalDescription(await client.pc.createAnswer())
    honest = client.pc.localDescription.sdp
    assert set(setups(honest)) == {"active"}
    mixed = with_setups(honest, ["active", "active", "passive", "passive"])
    await peer.accept_answer(mixed)
    assert peer.dtls_role == "server"
    await asyncio.sleep(0)
    return peer
