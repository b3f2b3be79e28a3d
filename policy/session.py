"""The record of a session: who was connected to which visit, from when to when, and why it
ended (SPEC §2). The live connection itself is signaling's (`signaling/session.py`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionRecord:
    id: str
    visit: str
    sub: str
    role: str
    mode: str
    node: str
    keys: tuple[str, ...]
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None
