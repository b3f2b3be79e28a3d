"""A kiosk and a family member in one visit exchange real media through the relay."""

from __future__ import annotations

from tests.conftest import make_visit, seed


async def test_kiosk_and_family_exchange_media(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], size=(320, 240), fps=15)
    family = server.client(visit["join"]["C1"]["token"], visit["id"], size=(320, 240), fps=15)
    try:
        joined = await kiosk.connect()
        assert joined["type"] == "joined", joined
        assert joined["monitored"] is True and joined["participants"] == []
        joined = await family.connect()
        assert joined["type"] == "joined", joined
        assert [p["role"] for p in joined["participants"]] == ["kiosk"]
        await kiosk.wait_for("participant-joined")
        await family.wait_frames("video", 10)
        await kiosk.wait_frames("video", 10)
        await family.wait_frames("audio", 10)
        await kiosk.wait_frames("audio", 10)
    finally:
        await family.leave()
        await kiosk.leave()
    assert family.close_code == 1000
