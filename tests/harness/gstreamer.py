"""The GStreamer kiosk (tests/harness/gst_kiosk.py) as something a test or a bench can drive.

The kiosk runs under Debian's system Python, which has `gi` (GStreamer's bindings); this
module, imported from the project's venv, starts it as a subprocess and reads the JSON events
it prints, one per line. The device token travels in the child's environment, never on its
command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SYSTEM_PYTHON = Path("/usr/bin/python3")  # the one with `gi` (GStreamer); the venv has none
SCRIPT = Path(__file__).resolve().with_name("gst_kiosk.py")
TOKEN_ENV = "PARLOR_KIOSK_TOKEN"
INSTALL = (
    "apt-get install python3-gi python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
    "gstreamer1.0-nice"
)


def gstreamer_missing() -> str | None:
    """None when the kiosk can run here, else what is missing: the kiosk's own `--check`
    (every gi namespace and GStreamer element it uses) under the system Python.
    tests/harness/system.py's `gstreamer` requirement is this."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON}"
    try:
        done = subprocess.run(
            [str(SYSTEM_PYTHON), str(SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} {SCRIPT.name} --check failed: {exc}"
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"{SCRIPT.name} --check printed no result: {done.stderr.strip()[-300:]}"
    if result.get("ok"):
        return None
    return f"missing {', '.join(result['missing'])}"


class GstKiosk:
    """One GStreamer kiosk process joined to one visit.

    `events` holds every event the kiosk printed, in order; the helpers wait on them.
    """

    def __init__(
        self,
        server: str,
        token: str,
        visit: str,
        *,
        seconds: float = 60.0,
        size: tuple[int, int] = (320, 240),
        fps: int = 15,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.server, self.token, self.visit = server, token, visit
        self.seconds, self.size, self.fps = seconds, size, fps
        self.extra_args = extra_args
        self.events: list[dict[str, Any]] = []
        self.stderr: deque[str] = deque(maxlen=200)
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()

    # --- lifetime ---------------------------------------------------------------------------
    async def start(self) -> GstKiosk:
        command = [
            str(SYSTEM_PYTHON), str(SCRIPT), "--server", self.server, "--visit", self.visit,
            "--seconds", str(self.seconds), "--width", str(self.size[0]),
            "--height", str(self.size[1]), "--fps", str(self.fps), *self.extra_args,
        ]  # fmt: skip
        env = {
            **os.environ,
            TOKEN_ENV: self.token,
            "GST_DEBUG": os.environ.get("GST_DEBUG", "1"),
            "PYTHONFAULTHANDLER": "1",
        }
        self._process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_events(self._process.stdout)),
            asyncio.create_task(self._read_stderr(self._process.stderr)),
        ]
        return self

    async def __aenter__(self) -> GstKiosk:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _read_events(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.events.append({"event": "process-ended", "at": time.monotonic()})
            self._changed.notify_all()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.stderr.append(raw.decode(errors="replace").rstrip())

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self, timeout: float = 8.0) -> int | None:
        """Ask the kiosk to leave (SIGTERM: it sends `leave`), wait for it; kill it if it hangs."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                await self.kill()
        await self._finish_readers()
        return process.returncode

    async def kill(self) -> None:
        """End the kiosk at once (SIGKILL), as a crash or a power cut would."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await self._finish_readers()

    async def _finish_readers(self) -> None:
        for task in self._readers:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)

    # --- what it saw ------------------------------------------------------------------------
    def find(self, name: str, **match: Any) -> dict[str, Any] | None:
        """The first event called `name` whose fields equal `match`, or None."""
        return next(
            (e for e in self.events if e.get("event") == name and _matches(e, match)),
            None,
        )

    def all(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The first event `name` (with fields equal to `match`); TimeoutError with the kiosk's
        recent events and stderr if it does not come, or if the process ends first."""

        def found() -> dict[str, Any] | None:
            return self.find(name, **match)

        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: found() is not None or self._ended()), timeout
                )
            except TimeoutError:
                raise TimeoutError(
                    f"no {name} {match or ''} within {timeout} s; {self.describe()}"
                ) from None
        event = found()
        if event is None:
            raise TimeoutError(f"kiosk ended before {name} {match or ''}; {self.describe()}")
        return event

    def _ended(self) -> bool:
        return any(e.get("event") == "process-ended" for e in self.events)

    def frames(self) -> dict[str, int]:
        """The latest decoded-frame counts per kind ("audio", "video")."""
        latest = next((e for e in reversed(self.events) if e.get("event") == "frames"), None)
        counts = {"audio": 0, "video": 0}
        if latest is not None:
            counts.update(latest["frames"])
        return counts

    async def wait_frames(self, kind: str, count: int, timeout: float = 15.0) -> int:
        """Wait until at least `count` decoded `kind` frames were reported; returns the count."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.frames()[kind] >= count or self._ended()),
                    timeout,
                )
            except TimeoutError:
                pass
        have = self.frames()[kind]
        if have < count:
            raise TimeoutError(
                f"kiosk decoded {have} {kind} frames, wanted {count}; {self.describe()}"
            )
        return have

    @property
    def close_code(self) -> int | None:
        closed = self.find("closed")
        return None if closed is None else closed["code"]

    def describe(self) -> str:
        """The kiosk's last events (without SDP) and stderr, for a failure message."""
        brief = [
            {k: v for k, v in e.items() if k not in ("sdp", "at")}
            for e in self.events[-25:]
            if e.get("event") not in ("frames", "candidate-sent")
        ]
        tail = "\n".join(list(self.stderr)[-15:])
        return f"events: {brief}; frames: {self.frames()}; stderr: {tail}"


def _matches(event: dict[str, Any], match: dict[str, Any]) -> bool:
    return all(event.get(key) == value for key, value in match.items())


async def decoded_frames_grow(
    frames: Callable[[], dict[str, int]],
    wait_frames: Callable[[str, int, float], Awaitable[Any]],
    growth: int,
    deadline: float,
) -> None:
    """A peer decodes its first remote video and audio frame, then `growth` more of each, by
    `deadline` (time.monotonic()): media arrives and keeps arriving. `frames()` gives its
    counts per kind; `wait_frames(kind, count, timeout)` is its own wait (GstKiosk's and
    ParlorClient's both fit)."""
    for kind in ("video", "audio"):
        await wait_frames(kind, 1, max(0.1, deadline - time.monotonic()))
    start = frames()
    for kind in ("video", "audio"):
        await wait_frames(kind, start[kind] + growth, max(0.1, deadline - time.monotonic()))
