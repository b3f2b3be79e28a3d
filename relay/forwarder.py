"""Fan-out of one publisher track's encoded frames to its subscribers.

A :class:`Forwarder` receives every encoded frame of one publisher track
from the moment it arrives (nothing piles up while nobody subscribes) and
offers it to each subscriber's :class:`ForwardedTrack`. A ForwardedTrack is
what one server-side ``RTCRtpSender`` reads: aiortc's sender passes anything
that is not a decoded ``av.Frame`` to ``encoder.pack()``, which only
re-packetizes, so forwarded video is never decoded nor re-encoded.

Each ForwardedTrack has its own bounded queue. A video frame usually
references the ones before it, so a subscriber that misses one cannot
decode until the next keyframe: a new subscriber, one that fell behind
(queue full) and one whose video resumes all drop frames until a keyframe
arrives, and ask the publisher for one at once. Keyframe requests are
rate-limited per publisher track by :class:`KeyframeRequester`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import av
from aiortc import MediaStreamError, MediaStreamTrack

from relay.stats import RelayStats

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds, per publisher track
VIDEO_QUEUE_FRAMES = 30  # ~1 s at 30 fps
AUDIO_QUEUE_FRAMES = 25  # 0.5 s of 20 ms Opus frames
DECODED_QUEUE_FRAMES = 3  # transcoding fallback: raw frames are large

MediaItem = av.Packet | av.frame.Frame


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


class Forwarder:
    """One publisher track (audio or video) and the tracks that forward it.

    ``active`` is the publisher-side gate: while False (forwarding stopped,
    or video restricted) incoming frames go nowhere and queued ones are
    discarded.
    """

    def __init__(
        self,
        kind: str,
        publisher_id: str,
        request_keyframe_upstream: Callable[[], None],
        stats: tuple[RelayStats, ...],
    ) -> None:
        self.kind = kind
        self.publisher_id = publisher_id
        self.active = True
        self.decoded = False
        """True in the transcoding fallback: items are decoded frames."""
        self._subscribers: list[ForwardedTrack] = []
        self._keyframes = KeyframeRequester(request_keyframe_upstream, self._keyframe_needed)
        self._keyframe_asked = False
        """A subscriber's decoder asked (PLI/FIR) and no keyframe came since."""
        self._stats = stats

    @property
    def subscribers(self) -> list[ForwardedTrack]:
        return list(self._subscribers)

    def push(self, item: MediaItem, keyframe: bool, size: int) -> None:
        """Offer one frame from the publisher to every subscriber."""
        if not self.active:
            return
        for stats in self._stats:
            stats.packets_received += 1
            stats.bytes_received += size
        if keyframe:
            self._keyframe_asked = False
        for track in self._subscribers:
            track.deliver(item, keyframe)

    def subscribe(self, track: ForwardedTrack) -> None:
        self._subscribers.append(track)
        self.request_keyframe()

    def unsubscribe(self, track: ForwardedTrack) -> None:
        if track in self._subscribers:
            self._subscribers.remove(track)

    def request_keyframe(self, *, asked_by_subscriber: bool = False) -> None:
        """Ask the publisher for a keyframe (rate-limited, video only).

        ``asked_by_subscriber``: the request is a subscriber's PLI/FIR, which
        only a keyframe satisfies (the relay cannot see the decoder's state).
        """
        if self.active and self.kind == "video" and not self.decoded:
            if asked_by_subscriber:
                self._keyframe_asked = True
            self._keyframes.request()

    def _keyframe_needed(self) -> bool:
        return self.active and (
            self._keyframe_asked or any(t.needs_keyframe and t.accepting for t in self._subscribers)
        )

    def set_active(self, active: bool) -> None:
        """Open or close the publisher-side gate.

        Closing discards what subscribers have queued from this publisher, so
        nothing of it is sent after the call. Reopening restarts every
        subscriber at the next keyframe.
        """
        if active == self.active:
            return
        self.active = active
        if active:
            for track in self._subscribers:
                track.resync()
            self.request_keyframe()
        else:
            self._keyframes.cancel()
            for track in self._subscribers:
                track.flush()

    def close(self) -> None:
        self.set_active(False)
        self._keyframes.cancel()


class ForwardedTrack(MediaStreamTrack):
    """One publisher track as seen by one subscriber's sender.

    ``recv()`` returns encoded ``av.Packet`` objects (decoded frames only in
    the transcoding fallback). ``accepting`` is the subscriber-side gate.
    """

    def __init__(
        self, source: Forwarder, *, accepting: bool, stats: tuple[RelayStats, ...]
    ) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self._accepting = accepting
        self._stats = stats
        self._queue: deque[MediaItem] = deque()
        if source.decoded:
            self._capacity = DECODED_QUEUE_FRAMES
        elif source.kind == "video":
            self._capacity = VIDEO_QUEUE_FRAMES
        else:
            self._capacity = AUDIO_QUEUE_FRAMES
        self._needs_keyframe = self._waits_for_keyframes()
        self._waiter: asyncio.Future[None] | None = None
        self._started = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def needs_keyframe(self) -> bool:
        """Waiting for a keyframe before it can forward anything."""
        return self._needs_keyframe

    @property
    def queued(self) -> int:
        """Frames waiting for the sender."""
        return len(self._queue)

    def deliver(self, item: MediaItem, keyframe: bool) -> None:
        """Queue one frame from the publisher, or drop it."""
        if not self._accepting:
            return
        if self._needs_keyframe:
            if not keyframe:
                self._count_dropped(1)
                return
            self._needs_keyframe = False
        if len(self._queue) >= self._capacity:
            if not self._waits_for_keyframes():
                self._count_dropped(1)  # audio (or decoded) frames stand alone
                self._queue.popleft()
            else:
                # Fell behind: every queued frame is stale, and what follows
                # them is undecodable without them; restart at a keyframe.
                self._count_dropped(len(self._queue))
                self._queue.clear()
                if not keyframe:
                    self._count_dropped(1)
                    self._needs_keyframe = True
                    self.source.request_keyframe()
                    return
        self._queue.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> MediaItem:
        if not self._started:
            self._started = True
            if self._needs_keyframe and self._accepting:
                self.source.request_keyframe()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.readyState != "live":
            raise MediaStreamError
        item = self._queue.popleft()
        size = item.size if isinstance(item, av.Packet) else 0
        for stats in self._stats:
            stats.packets_forwarded += 1
            stats.bytes_forwarded += size
        return item

    def pause(self) -> None:
        """Stop forwarding to this subscriber; what is queued is discarded."""
        self._accepting = False
        self._queue.clear()

    def resume(self) -> None:
        """Forward again, starting at the next keyframe."""
        if self._accepting or self.readyState != "live":
            return
        self._accepting = True
        self.resync()
        self.source.request_keyframe()

    def resync(self) -> None:
        """Discard what is queued and wait for the next keyframe."""
        self._queue.clear()
        self._needs_keyframe = self._waits_for_keyframes()

    def flush(self) -> None:
        """Discard what is queued (the publisher side was gated)."""
        self._queue.clear()

    def on_keyframe_request(self) -> None:
        """The subscriber sent a PLI or FIR: pass it on to the publisher."""
        if self._accepting and self.readyState == "live":
            self.source.request_keyframe(asked_by_subscriber=True)

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _waits_for_keyframes(self) -> bool:
        return self.kind == "video" and not self.source.decoded

    def _count_dropped(self, count: int) -> None:
        for stats in self._stats:
            stats.frames_dropped += count
