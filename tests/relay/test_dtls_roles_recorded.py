"""The relay's DTLS role logic against SDP that other stacks wrote (tests/relay/sdp/README.md).

GStreamer's `webrtcbin` (an RSA-certificate peer) offers `actpass` and answers the server's
re-offer; Firefox answered a re-offer with mixed roles per m-line. Each is fed to a real
`RelayPeer` the way signaling does (first offer, `Room.add`, server re-offer, answer); what is
checked is what the relay puts on the wire and the role its one BUNDLE transport keeps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from relay import RelayPeer, Room, aiortc_internals

SDP = Path(__file__).with_name("sdp")
SETUP = re.compile(r"^a=setup:(\w+)\r?$", re.MULTILINE)
KEPT_ROLE = "named other DTLS roles"  # relay.peer's log line when it ignores an answer's roles


def recorded(name: str) -> str:
    """A fixture as it went over the wire (the files are stored with LF line ends)."""
    return "\r\n".join((SDP / name).read_text().splitlines()) + "\r\n"


def setups(sdp: str) -> list[str]:
    return SETUP.findall(sdp)


def replace_setups(sdp: str, roles: list[str]) -> str:
    values = iter(roles)
    return SETUP.sub(lambda _: f"a=setup:{next(values)}\r", sdp)


def layout(sdp: str) -> list[tuple[str, str, str, str | None]]:
    """(kind, mid, direction, a=setup) per m-line."""
    return [
        (m.kind, m.mid, m.direction, m.dtls_role)
        for m in aiortc_internals.parse_description(sdp).media
    ]


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[Callable[[str], RelayPeer]]:
    """peer(id) -> a RelayPeer on 127.0.0.1 (tests/relay/conftest.py pins ICE), closed after."""
    made: list[RelayPeer] = []

    def make(peer_id: str) -> RelayPeer:
        made.append(RelayPeer(peer_id, ice_servers=[]))
        return made[-1]

    yield make
    for each in made:
        await each.close()


async def in_a_call(peer: Callable[[str], RelayPeer], first: str, other: str) -> RelayPeer:
    """A peer that answered the recorded offer `first`, in a room with one that answered
    `other`: the first peer now has the other's tracks to re-offer."""
    room = Room("V1", codec="VP8")
    subject, publisher = peer("subject"), peer("publisher")
    await subject.accept_offer(recorded(first))
    await publisher.accept_offer(recorded(other))
    room.add(subject)
    assert subject in room.add(publisher)
    return subject


async def test_gstreamers_actpass_offer_is_answered_passive(peer) -> None:
    offer = recorded("gstreamer-offer.sdp")
    assert setups(offer) == ["actpass", "actpass"]
    kiosk = peer("kiosk")
    answer = await kiosk.accept_offer(offer)
    assert setups(answer) == ["passive", "passive"]
    assert kiosk.dtls_role == "server"  # so its ECDSA certificate picks the suite: RSA peers fit


@pytest.mark.parametrize(
    ("offered", "answered", "role"),
    [
        ("actpass", "passive", "server"),
        ("active", "passive", "server"),
        ("passive", "active", "client"),
    ],
)
async def test_the_first_answer_takes_the_role_the_offer_leaves(
    peer, offered: str, answered: str, role: str
) -> None:
    offer = replace_setups(recorded("gstreamer-offer.sdp"), [offered, offered])
    kiosk = peer("kiosk")
    assert set(setups(await kiosk.accept_offer(offer))) == {answered}
    assert kiosk.dtls_role == role


async def test_re_offer_states_the_role_and_gstreamers_recorded_answer_keeps_it(
    peer, caplog: pytest.LogCaptureFixture
) -> None:
    kiosk = await in_a_call(peer, "gstreamer-offer.sdp", "firefox-offer.sdp")
    offer = await kiosk.create_offer()
    assert layout(offer) == layout(recorded("server-reoffer-to-gstreamer.sdp"))
    assert setups(offer) == ["passive"] * 4  # RFC 8842 §5.5: not actpass, the role in use
    answer = recorded("gstreamer-reoffer-answer.sdp")
    assert setups(answer) == ["active"] * 4
    with caplog.at_level(logging.INFO, logger="relay.peer"):
        await kiosk.accept_answer(answer)
    assert kiosk.dtls_role == "server"
    assert not [r for r in caplog.records if KEPT_ROLE in r.getMessage()]


@pytest.mark.parametrize(
    "roles",
    [
        ["passive", "passive", "active", "active"],  # as Firefox sent it
        ["active", "active", "passive", "passive"],  # the same, last m-line passive
    ],
)
async def test_firefoxs_mixed_roles_answer_cannot_flip_the_transport(
    peer, caplog: pytest.LogCaptureFixture, roles: list[str]
) -> None:
    family = await in_a_call(peer, "firefox-offer.sdp", "gstreamer-offer.sdp")
    assert family.dtls_role == "server"
    offer = await family.create_offer()
    assert setups(offer) == ["passive"] * 4
    answer = recorded("firefox-reoffer-answer-mixed-roles.sdp")
    assert setups(answer) == ["passive", "passive", "active", "active"]
    with caplog.at_level(logging.INFO, logger="relay.peer"):
        await family.accept_answer(replace_setups(answer, roles))
    # aiortc alone would take the last m-line's role: "client" for the second order.
    assert family.dtls_role == "server"
    assert len([r for r in caplog.records if KEPT_ROLE in r.getMessage()]) == 1
