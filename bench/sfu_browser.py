"""The SFU's browser figures (part of ``bench/sfu.py``): Chromium's ramp, and 3 % loss.

* :func:`browser_ramp`: the family and kiosk pages call each other through ``parlor serve``
  with Chromium's fake camera at 1280×720 (an init script asks ``getUserMedia`` for it),
  against two Chromium peer connections calling each other directly in one page over the
  same loopback, alternated in the same run. Sampled every 0.5 s from the sender's
  ``getStats``: ``availableOutgoingBitrate`` (its congestion controller's estimate) and
  the width of the video it sends. Chromium's estimate moves in steps (a probe succeeds,
  the estimate jumps) and the step's timing varies from call to call, so the figure is
  the median over rounds, and the whole series is kept.
* :func:`lossy_call`: ``tests.harness.losscall`` in a network namespace whose loopback
  loses 3 % of its packets (``tests.harness.netns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
HD = """(() => {
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (constraints) => original(constraints && constraints.video
    ? { ...constraints, video: { width: { exact: 1280 }, height: { exact: 720 }, frameRate: { ideal: 30 } } }
    : constraints);
})();"""
SENDER = """async (name) => {
  const pc = window[name];
  if (!pc || pc.connectionState !== "connected") return null;
  let estimate = null, width = null, sent = 0;
  const track = pc.getSenders().map((x) => x.track).find((t) => t && t.kind === "video");
  const camera = track ? track.getSettings().width : null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate)
      estimate = Math.max(estimate || 0, s.availableOutgoingBitrate);
    if (s.type === "outbound-rtp" && s.kind === "video") { width = s.frameWidth || 0; sent = s.bytesSent; }
  });
  return { estimate, width, sent, camera };
}"""
DIRECT = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const a = new RTCPeerConnection(), b = new RTCPeerConnection();
  a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
  b.ontrack = (e) => { const v = document.createElement("video"); v.muted = true; v.autoplay = true;
                       v.srcObject = e.streams[0]; document.body.append(v); };
  stream.getTracks().forEach((t) => a.addTrack(t, stream));
  await a.setLocalDescription(); await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(); await a.setRemoteDescription(b.localDescription);
  window.__directPc = a;
  return true;
}"""
SECONDS = 10.0
"""The estimate is read this long after the sender's connection is up."""
WATCH_SECONDS = 30.0
"""How long the sent width is watched for reaching 1280."""


async def _sample(page: Any, pc_name: str, seconds: float) -> dict[str, Any]:
    """From the sender's connection being up: its estimate and sent width every 0.5 s."""
    deadline = time.monotonic() + 30
    while await page.evaluate(SENDER, pc_name) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the sender did not connect within 30 s")
        await asyncio.sleep(0.1)
    connected = time.monotonic()
    samples = []
    hd_at = None
    at_10s: dict[str, Any] = {}
    while (elapsed := time.monotonic() - connected) < WATCH_SECONDS:
        sample = await page.evaluate(SENDER, pc_name) or {}
        samples.append({"t": round(elapsed, 2), **sample})
        if not at_10s and elapsed >= seconds:
            at_10s = sample
        if hd_at is None and (sample.get("width") or 0) >= 1280:
            hd_at = elapsed
        if at_10s and hd_at is not None:
            break
        await asyncio.sleep(0.5)
    return {
        "camera_width": samples[0].get("camera"),
        "available_outgoing_bitrate_kbps_at_10s": round((at_10s.get("estimate") or 0) / 1000),
        "sent_width_at_10s": at_10s.get("width"),
        "seconds_to_send_1280_wide": round(hd_at, 2) if hd_at is not None else None,
        "estimate_kbps_by_second": [round((s.get("estimate") or 0) / 1000) for s in samples[::2]],
    }


async def _through_relay(browser: Any, seconds: float) -> dict[str, Any]:
    from bench.harness import ServerProcess, seed_calls
    from tests.harness.chromium import watched_page

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="parlor-ramp-")))
    await server.start()
    try:
        [spec] = await seed_calls(server, {"F1": 1})
        family = await watched_page(browser, init_scripts=[HD])
        kiosk = await watched_page(browser, init_scripts=[HD])
        try:
            await family.page.goto(f"{server.url}/join/{spec.visit}#token={spec.family_token}")
            await family.page.wait_for_selector("#join-button:enabled", timeout=30_000)
            await family.page.click("#join-button")
            await kiosk.page.goto(f"{server.url}/kiosk#token={spec.kiosk_token}")
            return await _sample(family.page, "__parlorPc", seconds)
        finally:
            await family.context.close()
            await kiosk.context.close()
    finally:
        await server.stop()


async def _direct(browser: Any, seconds: float) -> dict[str, Any]:
    from tests.harness.chromium import watched_page

    app = web.Application()
    app.router.add_get(
        "/", lambda _: web.Response(text="<!doctype html><body>", content_type="text/html")
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    watched = await watched_page(browser, init_scripts=[HD])
    try:
        await watched.page.goto(f"http://127.0.0.1:{port}/")  # a secure context: localhost
        await watched.page.evaluate(DIRECT)
        return await _sample(watched.page, "__directPc", seconds)
    finally:
        await watched.context.close()
        await runner.cleanup()


async def browser_ramp(quick: bool) -> dict[str, Any]:
    from tests.harness.chromium import launch_chromium

    rounds = 1 if quick else 3
    runs: dict[str, list[dict[str, Any]]] = {"relay": [], "direct": []}
    async with launch_chromium() as browser:
        for _ in range(rounds):
            runs["relay"].append(await _through_relay(browser, SECONDS))
            runs["direct"].append(await _direct(browser, SECONDS))

    def med(path: str, key: str) -> float | None:
        values = [r[key] for r in runs[path] if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    relay = med("relay", "available_outgoing_bitrate_kbps_at_10s")
    direct = med("direct", "available_outgoing_bitrate_kbps_at_10s")
    ratio = round(relay / direct, 2) if relay and direct else None
    result = {
        "camera": "Chromium fake device, 1280x720",
        "runs": runs,
        "available_outgoing_bitrate_kbps_at_10s": {"relay": relay, "direct": direct},
        "relay_over_direct_at_10s": ratio,
        "seconds_to_send_1280_wide": {
            "relay": med("relay", "seconds_to_send_1280_wide"),
            "direct": med("direct", "seconds_to_send_1280_wide"),
        },
        "targets_met": {"relay>=0.8x_direct_at_10s": ratio is not None and ratio >= 0.8},
    }
    print(f"browser ramp: {json.dumps({k: v for k, v in result.items() if k != 'runs'})}",
          file=sys.stderr, flush=True)  # fmt: skip
    return result


async def lossy_call(quick: bool) -> dict[str, Any]:
    from tests.harness import netns

    missing = netns.missing()
    if missing is not None:
        return {"skipped": missing}
    seconds = 15 if quick else 30
    run = await netns.run_with_loss(
        [sys.executable, "-m", "tests.harness.losscall", "--seconds", str(seconds)],
        0.03,
        timeout=seconds + 120,
        cwd=str(REPO),
    )
    if run.returncode != 0:
        return {"failed": run.stderr[-2000:], "loss_method": run.method}
    result = json.loads(run.stdout.strip().splitlines()[-1])
    repaired = {}
    for name, page in result["pages"].items():
        video = page["inbound_video"]
        repaired[name] = {
            "nacks_sent_by_page": video.get("nackCount"),
            "retransmissions_received": video.get("retransmittedPacketsReceived"),
            "packets_lost_after_repair": video.get("packetsLost"),
            "freezes": video.get("freezeCount"),
            "freezes_total_s": video.get("totalFreezesDuration"),
            "longest_freeze_s": page["longest_freeze_s"],
        }
    out = {
        "loss": 0.03,
        "loss_method": run.method,
        "seconds": seconds,
        "longest_freeze_s": result["longest_freeze_s"],
        "by_page": repaired,
        "relay": result["relay"],
        "detail": result["pages"],
        "targets_met": {"no_freeze_over_1s": result["longest_freeze_s"] < 1.0},
    }
    with contextlib.suppress(Exception):
        print(f"loss: {json.dumps({k: v for k, v in out.items() if k != 'detail'})}",
              file=sys.stderr, flush=True)  # fmt: skip
    return out
