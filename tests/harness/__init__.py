"""What the test suites and the benchmarks share: browsers, interop peers, databases, seeders.

This package is the one public home of test infrastructure. `tests/*/` suites and `bench/`
import from here; nothing here imports a suite's fixtures, and nothing in the product
(`policy/`, `relay/`, `signaling/`) imports from here.

- `system`: the system software suites need, by name. `pytestmark = [require("gstreamer")]`
  (or `need("postgresql")` inside a fixture) skips a test with what to install when it is
  missing, lists it in the run's closing summary, and fails it under `CI=true`.
- `chromium`, `firefox`: the two browsers, with fake devices and WebRTC on loopback;
  `page`: what both offer a flow (open, evaluate, click, screenshot, problems);
  `callpage`: the family and kiosk pages as a person uses them, in either browser.
- `rtpclient`: a WebRTC client whose media is raw RTP (aiortc negotiates, the packets are
  its own): exact control and a record of every packet, cheap enough for dozens per
  process; `footage`: the pre-encoded, pre-packetized media it sends.
- `netns`: a command run in a network namespace whose loopback loses packets;
  `losscall`: the Chromium call measured there (freezes, NACKs, repairs).
"""
