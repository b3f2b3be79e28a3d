"""Keyframe requests to a publisher, rate-limited but never lost.

A video subscriber that starts, resumes, or whose decoder lost a reference cannot decode
until the next keyframe, and a publisher (a browser, aiortc) sends one only when asked, or
every few hundred frames. Subscribers' PLI/FIR storms must not turn into a keyframe storm
upstream (each keyframe costs several times a normal frame's bytes), so requests go through
:class:`KeyframeRequester`, one per publisher track.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds, per publisher track
KEYFRAME_RETRY_SECONDS = 1.0
"""A request is sent again this long after the last while a keyframe is still needed: a
PLI lost on the way (or a keyframe whose first packet was) would otherwise leave a new
subscriber without video until the publisher's next keyframe of its own, which a browser
sends only every few thousand frames."""


class KeyframeRequester:
    """Sends keyframe requests upstream at most once per ``interval``.

    A request inside the interval is not dropped but deferred to the end of
    it (and merged with any others), so a subscriber that starts just after
    another one's keyframe went by still gets its own keyframe. A deferred
    request is sent only if ``still_needed()`` says a keyframe has not come
    meanwhile: a wasted keyframe costs bandwidth and, worse, the next
    subscriber's window. For as long as it says one is needed, the request
    is repeated every ``retry`` seconds: requests and keyframes cross a lossy
    network too.
    """

    def __init__(
        self,
        send: Callable[[], None],
        still_needed: Callable[[], bool] = lambda: True,
        interval: float = KEYFRAME_REQUEST_INTERVAL,
        retry: float = KEYFRAME_RETRY_SECONDS,
    ) -> None:
        self._send = send
        self._still_needed = still_needed
        self._interval = interval
        self._retry_after = max(retry, interval)
        self._last: float | None = None
        self._deferred: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None

    def request(self) -> None:
        if self._deferred is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last is None or now - self._last >= self._interval:
            self._fire()
        else:
            self._deferred = loop.call_at(self._last + self._interval, self._fire_deferred)

    def cancel(self) -> None:
        for timer in (self._deferred, self._retry):
            if timer is not None:
                timer.cancel()
        self._deferred = self._retry = None

    def _fire_deferred(self) -> None:
        self._deferred = None
        if self._still_needed():
            self._fire()

    def _fire_retry(self) -> None:
        self._retry = None
        if self._deferred is None and self._still_needed():
            self._fire()

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        if self._retry is not None:
            self._retry.cancel()
        self._retry = loop.call_at(self._last + self._retry_after, self._fire_retry)
        self._send()
