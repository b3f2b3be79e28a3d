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


class KeyframeRequester:
    """Sends keyframe requests upstream at most once per ``interval``.

    A request inside the interval is not dropped but deferred to the end of
    it (and merged with any others), so a subscriber that starts just after
    another one's keyframe went by still gets its own keyframe. A deferred
    request is sent only if ``still_needed()`` says a keyframe has not come
    meanwhile: a wasted keyframe costs bandwidth and, worse, the next
    subscriber's window.
    """

    def __init__(
        self,
        send: Callable[[], None],
        still_needed: Callable[[], bool] = lambda: True,
        interval: float = KEYFRAME_REQUEST_INTERVAL,
    ) -> None:
        self._send = send
        self._still_needed = still_needed
        self._interval = interval
        self._last: float | None = None
        self._deferred: asyncio.TimerHandle | None = None

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
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None

    def _fire_deferred(self) -> None:
        self._deferred = None
        if self._still_needed():
            self._fire()

    def _fire(self) -> None:
        self._last = asyncio.get_running_loop().time()
        self._send()
