"""A Chromium → relay → Chromium call on a lossy loopback, and what it froze.

Run inside a network namespace of its own (``tests.harness.netns.run_with_loss``): starts
``parlor serve`` (``bench.harness.ServerProcess``), seeds one visit, joins it with the
family page and the kiosk page in one Chromium, and while the call runs samples each page's
decoded video frames every 100 ms. A freeze is a time during which the remote video
decoded no new frame. Prints one JSON document: per page the longest freeze, Chromium's own
freeze count and duration, NACKs and retransmissions; and the relay's counters.

``python -m tests.harness.losscall --seconds 20``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

INBOUND = """async () => {
  const pc = window.__parlorPc;
  if (!pc) return null;
  const out = { video: null, audio: null, outbound: null };
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && (!out[s.kind] || s.packetsReceived > out[s.kind].packetsReceived))
      out[s.kind] = s;
    if (s.type === "outbound-rtp" && s.kind === "video") out.outbound = s;
  });
  return out;
}"""
STATE = r"""() => {
  const pc = window.__parlorPc;
  const app = document.querySelector("#app, main");
  return {
    pc: pc ? { connection: pc.connectionState, ice: pc.iceConnectionState,
               signaling: pc.signalingState,
               receivers: pc.getReceivers().map((r) => r.track && r.track.kind) } : null,
    state: app ? app.dataset.state : null,
    text: document.body.innerText.trim().replace(/\s+/g, " ").slice(0, 300),
  };
}"""
INBOUND_FIELDS = (
    "framesDecoded", "framesDropped", "freezeCount", "totalFreezesDuration", "packetsReceived",
    "packetsLost", "nackCount", "pliCount", "retransmittedPacketsReceived", "frameWidth",
    "concealedSamples", "totalSamplesReceived",
)  # fmt: skip
START_SECONDS = 60
"""Joining over a lossy loopback (the signaling's TCP loses 3 % too) on a busy machine."""
OUTBOUND_FIELDS = ("nackCount", "retransmittedPacketsSent", "pliCount", "packetsSent", "frameWidth")


def _pick(stats: dict[str, Any] | None, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: stats.get(f) for f in fields if stats and stats.get(f) is not None}


async def call(seconds: float) -> dict[str, Any]:
    from bench.harness import ServerProcess, seed_calls
    from tests.harness.chromium import launch_chromium, watched_page

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="parlor-loss-")))
    await server.start()
    try:
        [spec] = await seed_calls(server, {"F1": 1})
        async with launch_chromium() as browser:
            family = await watched_page(browser)
            kiosk = await watched_page(browser)
            await family.page.goto(f"{server.url}/join/{spec.visit}#token={spec.family_token}")
            await family.page.wait_for_selector("#join-button:enabled", timeout=30_000)
            await family.page.click("#join-button")
            await kiosk.page.goto(f"{server.url}/kiosk#token={spec.kiosk_token}")
            pages = {"family": family.page, "kiosk": kiosk.page}
            deadline = time.monotonic() + START_SECONDS
            while time.monotonic() < deadline:
                seen = [await page.evaluate(INBOUND) for page in pages.values()]
                if all(s and s["video"] and s["video"].get("framesDecoded", 0) > 5 for s in seen):
                    break
                await asyncio.sleep(0.2)
            else:
                states = {name: await page.evaluate(STATE) for name, page in pages.items()}
                videos = {name: s and s["video"] for name, s in zip(pages, seen, strict=True)}
                log = server.log_path.read_text(errors="replace").splitlines()[-40:]
                raise RuntimeError(
                    f"the call did not start within {START_SECONDS} s: pages {states}, "
                    f"inbound video {videos}, errors {family.errors + kiosk.errors}, "
                    "server log's tail:\n" + "\n".join(log)
                )
            first = {name: await page.evaluate(INBOUND) for name, page in pages.items()}
            last_change = {name: time.monotonic() for name in pages}
            frames = {name: first[name]["video"]["framesDecoded"] for name in pages}
            longest = dict.fromkeys(pages, 0.0)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await asyncio.sleep(0.1)
                for name, page in pages.items():
                    now_stats = await page.evaluate(INBOUND)
                    decoded = now_stats["video"]["framesDecoded"] if now_stats["video"] else 0
                    now = time.monotonic()
                    if decoded > frames[name]:
                        frames[name] = decoded
                        last_change[name] = now
                    longest[name] = max(longest[name], now - last_change[name])
            result: dict[str, Any] = {"seconds": seconds, "pages": {}}
            for name, page in pages.items():
                final = await page.evaluate(INBOUND)
                before = first[name]
                video = _pick(final["video"], INBOUND_FIELDS)
                video["framesDecodedDuringRun"] = video.get("framesDecoded", 0) - before[
                    "video"
                ].get("framesDecoded", 0)
                result["pages"][name] = {
                    "longest_freeze_s": round(longest[name], 3),
                    "inbound_video": video,
                    "inbound_audio": _pick(final["audio"], INBOUND_FIELDS),
                    "outbound_video": _pick(final["outbound"], OUTBOUND_FIELDS),
                }
        assert server.http is not None
        async with server.http.get(server.url + "/metrics") as response:
            metrics = await response.text()
        result["relay"] = {
            name: float(match.group(1))
            for name in (
                "packets_forwarded", "packets_retransmitted", "nacks_sent",
                "keyframe_requests_forwarded", "transport_feedback_sent",
            )
            if (match := re.search(rf"^parlor_relay_{name}_total (\S+)$", metrics, re.MULTILINE))
        }  # fmt: skip
        result["longest_freeze_s"] = max(p["longest_freeze_s"] for p in result["pages"].values())
        return result
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(call(args.seconds))))


if __name__ == "__main__":
    main()
