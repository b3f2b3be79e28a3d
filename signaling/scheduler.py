"""The server's clock: directives expire and lapse, visits end (and are closed as ended or
no-show), recordings past retention are deleted, and in a cluster the kiosks of a vanished
node go offline, on time.

One loop per node sleeps until the next deadline (bounded by `tick_seconds`), so nothing
waits for the next request to be processed lazily.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from policy.errors import StoreUnavailable
from signaling import keys as K
from signaling.bus import STALE_AFTER
from signaling.protocol import Close, Message, Reason

log = logging.getLogger("parlor.scheduler")

WARNINGS = (600, 300, 120, 60, 30, 10)  # seconds before the end when participants are told


async def run(app: web.Application) -> None:
    unavailable = False  # said once per run of failed ticks, not every tick
    while True:
        try:
            delay, problem = await tick(app)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler tick failed")
            delay, problem = app[K.CONFIG].tick_seconds, None
        if problem is not None and not unavailable:
            log.warning(
                "store unavailable (%s): directives due expire or lapse once it answers; "
                "visits still end on time",
                problem.message,
            )
        unavailable = problem is not None
        await asyncio.sleep(delay)


async def tick(app: web.Application) -> tuple[float, StoreUnavailable | None]:
    """Write what the store could not take, close due directives, start the ones due, warn
    and end visits; return how long to sleep, and why the store was not written (if so).

    An unavailable store stops only the writes: visits end and directives start on time
    (what they end is recorded through the enforcer's backlog)."""
    policy, enforcer, sessions, directives = (
        app[K.POLICY],
        app[K.ENFORCER],
        app[K.SESSIONS],
        app[K.DIRECTIVES],
    )
    problem = None
    try:
        await enforcer.backlog.flush()
        if app[K.READY].is_set():
            await directives.close_due()
            await app[K.VISITS].close_due()  # windows passed: ended or no-show (every few seconds)
            await app[K.PRESENCE].sweep_due(app[K.STORE].cluster, STALE_AFTER)
            await app[K.RECORDINGS].sweep_due(app[K.STORE].cluster, STALE_AFTER)  # retention
    except StoreUnavailable as exc:
        problem = exc
    await directives.start_due()
    now = policy.clock()
    deadlines = []
    for call in list(sessions.calls.values()):
        left = call.visit.ends_at - now
        if left <= 0:
            await asyncio.gather(
                *(
                    enforcer.end_session(s, Reason.VISIT_ENDED, Close.VISIT_OVER)
                    for s in list(call.sessions)
                )
            )
            continue
        deadlines.append(call.visit.ends_at)
        for threshold in WARNINGS:
            if left <= threshold and threshold not in call.warned:
                call.warned.update(t for t in WARNINGS if t >= threshold)
                message = {"type": Message.TIME_REMAINING, "seconds": int(left)}
                await asyncio.gather(*(s.send(message) for s in call.joined()))
                break
        deadlines += [call.visit.ends_at - t for t in WARNINGS if t not in call.warned]
    directive_deadline = policy.index.next_deadline()
    if directive_deadline is not None:
        deadlines.append(directive_deadline)
    tick_seconds = app[K.CONFIG].tick_seconds
    upcoming = [d - now for d in deadlines if d > now]
    return max(0.01, min([tick_seconds, *upcoming])), problem
