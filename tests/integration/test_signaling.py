"""Signaling over real WebSockets with real aiortc peers: SPEC §5 flows and close codes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import jwt

from relay import RelayPeer
from tests.conftest import SECRET, make_visit, seed
from tests.integration.test_directives import LIGHT, frames_flow


async def test_kiosk_and_three_family_members_all_see_each_other(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2", "C3"])
    names = ["device", "C1", "C2", "C3"]
    clients = [server.client(visit["join"][n]["token"], visit["id"], **LIGHT) for n in names]
    try:
        for client in clients:
            assert (await client.connect())["type"] == "joined"
        for client in clients:
            await client.wait_frames("video", 15, timeout=15)
        # three remote video tracks arrive at each participant: count distinct streams
        for client in clients:
            receivers = [
                t for t in client.pc.getTransceivers() if t.kind == "video" and t.receiver.track
            ]
            assert len(receivers) >= 3
        joined_events = [m for m in clients[0].messages if m["type"] == "participant-joined"]
        assert {m["participant"]["role"] for m in joined_events} == {"family"} and len(
            joined_events
        ) == 3
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_late_joiner_gets_video_fast(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    late = server.client(visit["join"]["C2"]["token"], visit["id"], **LIGHT)
    try:
        await kiosk.connect()
        await c1.connect()
        await c1.wait_frames("video", 20)
        started = time.monotonic()
        await late.connect()
        await late.wait_frames("video", 1, timeout=5)
        assert time.monotonic() - started < 3.0  # the figure itself is measured in bench/sfu.py
        assert {m["role"] for m in late.joined["participants"]} == {"kiosk", "family"}
    finally:
        await asyncio.gather(kiosk.close(), c1.close(), late.close())


async def test_newer_session_of_the_same_identity_replaces_the_older(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    token = visit["join"]["C1"]["token"]
    first = server.client(token, visit["id"], **LIGHT)
    second = server.client(token, visit["id"], **LIGHT)
    try:
        one = await first.connect()
        two = await second.connect()
        await asyncio.wait_for(first.closed.wait(), 5)
        assert first.close_code == 4409 and first.terminated["reason"] == "replaced"
        assert second.close_code is None
        status, sessions = await server.api("GET", "/api/v1/sessions?live=false")
        reasons = {s["id"]: s["end_reason"] for s in sessions}
        assert reasons[one["session"]] == "replaced" and reasons[two["session"]] is None
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_the_first_message_of_a_replacing_session_is_joined(server):
    """SPEC §5: every session's first server message is `joined` — also for a second window
    that replaces the first, in a call where others hear the first one go."""
    await seed(server)
    visit = await make_visit(server, ["C1"])
    token = visit["join"]["C1"]["token"]
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    first = server.client(token, visit["id"], **LIGHT)
    second = server.client(token, visit["id"], **LIGHT)
    try:
        assert (await kiosk.connect())["type"] == "joined"
        one = await first.connect()
        await second.connect()
        await asyncio.wait_for(first.closed.wait(), 5)
        await kiosk.wait_for("participant-left")
        assert [m["type"] for m in second.messages][:2] == ["joined", "time-remaining"]
        assert [p["role"] for p in second.joined["participants"]] == ["kiosk"]
        # the kiosk hears the first window go; the second never hears of its predecessor
        assert kiosk.last("participant-left")["participant"] == one["session"]
        assert not any(m["type"] == "participant-left" for m in second.messages)
    finally:
        await asyncio.gather(kiosk.close(), first.close(), second.close())


async def test_visit_ends_on_the_server_at_ends_at(server):
    await seed(server)
    visit = await make_visit(server, ["C1"], starts_in=-1, length=4)
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    try:
        await kiosk.connect()
        await c1.connect()
        remaining = await c1.wait_for("time-remaining")
        assert 0 < remaining["seconds"] <= 3
        await asyncio.wait_for(asyncio.gather(kiosk.closed.wait(), c1.closed.wait()), 6)
        for client in (kiosk, c1):
            assert client.close_code == 4410 and client.terminated["reason"] == "visit-ended"
        late = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
        answer = await late.connect()
        await late.close()
        assert answer["code"] == "visit-over" and late.close_code == 4410
    finally:
        await asyncio.gather(kiosk.close(), c1.close())


async def raw_ws(server):
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws")
    return http, ws


async def exchange(server, *frames, binary: bool = False):
    """Send frames on a fresh socket; return the messages received and the close code."""
    http, ws = await raw_ws(server)
    try:
        for frame in frames:
            if binary:
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
        messages = []
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                messages.append(json.loads(msg.data))
        return messages, ws.close_code
    finally:
        await http.close()


async def test_every_refusal_has_its_code(server):
    await seed(server)
    visit = await make_visit(server, ["C1"])
    other = await make_visit(server, ["D1"], inmate="I2", device="K2")
    family = visit["join"]["C1"]["token"]
    expired = jwt.encode({"sub": "contact:C1", "role": "family", "visit": visit["id"], "iat": 1, "nbf": 1, "exp": 2,
                          "jti": "j"}, SECRET, algorithm="HS256")  # fmt: skip
    cases = [
        ([{"type": "offer", "sdp": "x"}], "join-required", 4400),
        (["not json"], "join-required", 4400),
        ([{"type": "join", "token": "garbage", "visit": visit["id"]}], "bad-token", 4401),
        ([{"type": "join", "token": expired, "visit": visit["id"]}], "expired-token", 4401),
        ([{"type": "join", "token": family, "visit": other["id"]}], "wrong-visit", 4403),
        (
            [{"type": "join", "token": other["join"]["device"]["token"], "visit": visit["id"]}],
            "wrong-device",
            4403,
        ),
        (
            [{"type": "join", "token": server.token("auditor:a", "auditor"), "visit": visit["id"]}],
            "forbidden",
            4403,
        ),
        ([{"type": "join", "token": family, "visit": "V-nope"}], "unknown-visit", 4403),
        (
            [{"type": "join", "token": family, "visit": visit["id"], "mode": "monitor"}],
            "forbidden",
            4403,
        ),
        (["x" * (70 * 1024)], "message-too-large", 4413),
    ]
    for frames, code, close in cases:
        messages, close_code = await exchange(server, *frames)
        assert messages and messages[-1]["type"] == "error" and messages[-1]["code"] == code, (
            code,
            messages,
        )
        assert close_code == close, (code, close_code)
    messages, close_code = await exchange(server, b"\x00\x01", binary=True)
    assert close_code == 4400 and messages[-1]["code"] == "bad-frame"


async def test_bad_frames_after_join_get_errors_and_harm_no_one(server):
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    bystander = server.client(visit["join"]["C2"]["token"], visit["id"], **LIGHT)
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    await bystander.connect()
    await kiosk.connect()
    http, ws = await raw_ws(server)
    try:
        await ws.send_json(
            {"type": "join", "token": visit["join"]["C1"]["token"], "visit": visit["id"]}
        )
        joined = await ws.receive_json(timeout=5)
        assert joined["type"] == "joined"
        probes = [
            ("{", "bad-json"), (json.dumps({"type": "dance"}), "unknown-type"),
            (json.dumps({"type": "join"}), "already-joined"), (json.dumps({"type": "answer", "sdp": "v=0"}), "unexpected-answer"),
            (json.dumps({"type": "offer", "sdp": 5}), "bad-sdp"), (json.dumps({"type": "candidate", "candidate": 1}), "bad-candidate"),
            (json.dumps([1, 2]), "bad-json"), (json.dumps({"type": "offer", "sdp": "v=0\r\nnonsense"}), "unsupported-offer"),
        ]  # fmt: skip
        for frame, code in probes:
            await ws.send_str(frame)
            while True:
                message = await ws.receive_json(timeout=5)
                if message["type"] == "error":
                    break
            assert message["code"] == code, (frame, message)
        vp9_only = await vp9_offer()
        await ws.send_json({"type": "offer", "sdp": vp9_only})
        while (message := await ws.receive_json(timeout=5))["type"] != "error":
            pass
        assert message["code"] == "unsupported-offer"
        assert not ws.closed
        await ws.send_str("y" * (70 * 1024))
        while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert ws.close_code == 4413
        assert await frames_flow(bystander) and await frames_flow(kiosk)
    finally:
        await http.close()
        await asyncio.gather(bystander.close(), kiosk.close())


async def vp9_offer() -> str:
    from aiortc import RTCPeerConnection, RTCRtpSender

    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("video", direction="sendrecv")
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP9"]
                                    or [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"])  # fmt: skip
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    if "VP9" not in sdp:  # aiortc lacks VP9: rewrite the VP8 offer into a VP9-only one
        sdp = sdp.replace("VP8/90000", "VP9/90000")
    return sdp


async def test_server_created_no_video_encoder(server):
    """The relay forwards RTP packets: no server-side sender ever encodes, no receiver decodes."""
    await seed(server)
    visit = await make_visit(server, ["C1"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    try:
        await kiosk.connect()
        await c1.connect()
        await c1.wait_frames("video", 20)
        from relay.aiortc_internals import decoder_running, encoding_context
        from signaling import keys as K

        peers: list[RelayPeer] = [s.peer for s in server.app[K.SESSIONS].by_id.values()]
        assert len(peers) == 2 and all(p.stats()["legs_live"] == 2 for p in peers)
        assert all(p.stats()["packets_forwarded"] > 20 for p in peers)
        senders = [
            t.sender
            for p in peers
            for t in p.connection.getTransceivers()
            if t.kind == "video" and t.direction in ("sendonly", "sendrecv")
        ]  # the joiner's own m-line carries the kiosk's video (relay/peer.py): sendrecv
        receivers = [
            t.receiver for p in peers for t in p.connection.getTransceivers() if t.kind == "video"
        ]
        assert len(senders) == 2 and all(encoding_context(sender) is None for sender in senders)
        assert receivers and not any(decoder_running(receiver) for receiver in receivers)
    finally:
        await asyncio.gather(kiosk.close(), c1.close())


async def test_the_second_joiner_gets_the_first_in_its_answer_and_no_server_offer(server):
    """relay/peer.py: the joiner's answer carries the kiosk on its own m-lines, so only the
    kiosk takes a re-offer; the kiosk leaving retires nothing on the family's side (no offer),
    and a kiosk coming back reaches the family on new m-lines of a server offer."""
    await seed(server)
    visit = await make_visit(server, ["C1"])
    token = visit["join"]["device"]["token"]
    kiosk = server.client(token, visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    back = server.client(token, visit["id"], **LIGHT)
    try:
        await kiosk.connect()
        await c1.connect()
        assert await frames_flow(c1, "video") and await frames_flow(kiosk, "video")
        assert await frames_flow(c1, "audio") and await frames_flow(kiosk, "audio")
        offers = lambda client: [m for m in client.messages if m["type"] == "offer"]  # noqa: E731
        assert offers(c1) == [] and len(offers(kiosk)) == 1
        assert [t.direction for t in c1.pc.getTransceivers()] == ["sendrecv", "sendrecv"]

        await kiosk.leave()
        await c1.wait_for("participant-left")
        await asyncio.sleep(0.3)  # an offer would come at once
        assert offers(c1) == [] and not c1.closed.is_set()

        await back.connect()
        assert await frames_flow(c1, "video", timeout=10) and await frames_flow(back, "video")
        assert len(offers(c1)) == 1 and len(c1.pc.getTransceivers()) == 4
    finally:
        await asyncio.gather(kiosk.close(), c1.close(), back.close())


async def test_a_first_offer_refused_after_wiring_is_unwired_again(server, monkeypatch):
    """The joiner is wired into the room while its answer is made; if making it fails, it is
    unwired: the kiosk forwards nothing to it and its own m-lines are as they were."""
    from relay import aiortc_internals
    from signaling import keys as K

    await seed(server)
    visit = await make_visit(server, ["C1"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    real = aiortc_internals.set_local_answer
    try:
        await kiosk.connect()

        async def refuse(pc):  # type: ignore[no-untyped-def]
            raise RuntimeError("no answer today")

        monkeypatch.setattr(aiortc_internals, "set_local_answer", refuse)
        await c1.connect(offer=False)
        await c1._offer(c1.joined)  # noqa: SLF001 - the client's own first offer, as connect makes it
        error = await c1.wait_for("error")
        assert error["code"] == "unsupported-offer" and "no answer today" in error["message"]
        monkeypatch.setattr(aiortc_internals, "set_local_answer", real)
        call = server.app[K.SESSIONS].calls[visit["id"]]
        assert [p.peer_id for p in call.room.peers] == [s.peer.peer_id for s in call.sessions
                                                        if s.actor.role == "kiosk"]  # fmt: skip
        kiosk_peer = call.room.peers[0]
        assert kiosk_peer.legs() == [] and not kiosk_peer.offer_needed
        assert [m for m in kiosk.messages if m["type"] == "offer"] == []
    finally:
        await asyncio.gather(kiosk.close(), c1.close())


async def test_simultaneous_first_joins_share_one_call(server):
    """Two participants joining at the same instant must land in the same call."""
    await seed(server)
    visit = await make_visit(server, ["C1"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], **LIGHT)
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    try:
        answers = await asyncio.gather(kiosk.connect(), c1.connect())
        assert [a["type"] for a in answers] == ["joined", "joined"]
        await kiosk.wait_frames("video", 5)
        await c1.wait_frames("video", 5)
    finally:
        await asyncio.gather(kiosk.close(), c1.close())


async def test_a_session_whose_media_connection_dies_is_ended(server):
    """If the peer connection fails on its own (e.g. ICE consent expires), the session ends
    (`error` media-failed with the cause, close 4502) instead of lingering as live."""
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    c1 = server.client(visit["join"]["C1"]["token"], visit["id"], **LIGHT)
    c2 = server.client(visit["join"]["C2"]["token"], visit["id"], **LIGHT)
    try:
        joined = await c1.connect()
        await c2.connect()
        await c2.wait_frames("video", 3)
        from signaling import keys as K

        session = server.app[K.SESSIONS].by_id[joined["session"]]
        await session.peer._pc.close()  # the connection dies under the session, not through Parlor
        await asyncio.wait_for(c1.closed.wait(), 5)
        assert c1.close_code == 4502 and c1.terminated is None
        assert c1.error["code"] == "media-failed" and "lost" in c1.error["message"]
        status, sessions = await server.api("GET", "/api/v1/sessions")
        assert joined["session"] not in {s["id"] for s in sessions}
        assert (await c2.wait_for("participant-left"))["participant"] == joined["session"]
        assert c2.close_code is None
    finally:
        await asyncio.gather(c1.close(), c2.close())


async def test_a_peer_that_cannot_complete_dtls_gets_media_failed_and_4502(server, caplog):
    """A client whose DTLS certificate does not match the fingerprint it offered: the session
    gets `error` media-failed with the cause and close 4502 (it may retry), the server logs
    one WARNING line with the cause, and the session is not left live (issue #11)."""
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    await seed(server)
    visit = await make_visit(server, ["C1"])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    pc.addTransceiver("video")
    caplog.set_level("WARNING", logger="parlor.ws")
    async with server.http.ws_connect(server.url.replace("http", "ws") + "/ws") as ws:
        await ws.send_json(
            {"type": "join", "token": visit["join"]["C1"]["token"], "visit": visit["id"]}
        )
        joined = await ws.receive_json(timeout=5)
        assert joined["type"] == "joined"
        await pc.setLocalDescription(await pc.createOffer())
        lines = pc.localDescription.sdp.splitlines()
        wrong = [
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
            if line.startswith("a=fingerprint:")
            else line
            for line in lines
        ]
        await ws.send_json({"type": "offer", "sdp": "\r\n".join(wrong) + "\r\n"})
        seen = []
        while True:
            msg = await ws.receive(timeout=25)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            seen.append(data)
            if data["type"] == "answer":
                await pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "answer"))
        assert ws.close_code == 4502
    await pc.close()
    errors = [m for m in seen if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["media-failed"]
    assert "fingerprint" in errors[0]["message"]
    assert not any(m["type"] == "terminated" for m in seen)
    warnings = [
        r for r in caplog.records if r.name == "parlor.ws" and "media failed" in r.getMessage()
    ]
    assert len(warnings) == 1 and "fingerprint" in warnings[0].getMessage()
    status, sessions = await server.api("GET", "/api/v1/sessions")
    assert sessions == []
    status, audit = await server.api("GET", "/api/v1/audit")
    ended = [e for e in audit if e["action"] == "session.ended"]
    assert [e["data"]["reason"] for e in ended] == ["media-failed"]
