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


async def test_metrics_count_joins_refusals_directives_and_forwarded_media(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], size=(160, 120), fps=10)
    family = server.client(visit["join"]["C1"]["token"], visit["id"], size=(160, 120), fps=10)
    try:
        await kiosk.connect()
        await family.connect()
        await family.wait_frames("video", 10)
        refused = server.client("not-a-token", visit["id"])
        await refused.connect()
        await refused.close()
        status, _ = await server.api("POST", "/api/v1/directives", {
            "scope": "contact:C1", "action": "suspend", "reason": "r", "legal_basis": "b",
            "expires_at": "2099-01-01T00:00:00Z"})  # fmt: skip
        assert status == 422  # longer than 30 days: not counted
        async with server.http.get(server.url + "/metrics") as response:
            text = await response.text()
    finally:
        await family.leave()
        await kiosk.leave()

    def value(prefix: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])

    assert value('parlor_joins_total{mode="participant",role="family"}') == 1
    assert value('parlor_refusals_total{code="bad-token"}') == 1
    assert value("parlor_live_sessions") == 2
    assert value("parlor_relay_packets_forwarded") > 20
    assert value("parlor_relay_bytes_forwarded") > 1000
    assert "parlor_event_loop_lag_seconds" in text
    assert value("parlor_memory_trims_total") == 0  # nobody has left yet: nothing to trim
