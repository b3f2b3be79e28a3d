"""Fixtures of the interop suites (other WebRTC stacks against the real server): the seeded
server and the module's Chromium are the browser suites' own."""

from tests.browser.conftest import browser, chromium, live  # noqa: F401 (re-exported fixtures)
