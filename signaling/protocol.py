"""The signaling protocol's names, in one place: close codes, message types, error codes, end
reasons, and the words people are shown (SPEC §5, plus what Parlor adds).

Every frame the server sends and every WebSocket it closes uses these names; nothing else in
`signaling/` writes a close code or an error code by hand (tests/unit/test_protocol.py
checks both, and that the table below and `Close` agree).

WebSocket close codes:

| code | name           | meaning                                                         | from      |
|------|----------------|-----------------------------------------------------------------|-----------|
| 1000 | NORMAL         | normal closure (`leave`, or the client went away)               | SPEC §5   |
| 1001 | GOING_AWAY     | the server is shutting down                                     | RFC 6455  |
| 1011 | INTERNAL_ERROR | the server failed; the client may rejoin                        | RFC 6455  |
| 4307 | REDIRECT       | the visit's call lives on another node: join at `url` instead   | Parlor    |
| 4400 | PROTOCOL_ERROR | protocol error                                                  | SPEC §5   |
| 4401 | BAD_TOKEN      | bad or expired token                                            | SPEC §5   |
| 4403 | REFUSED        | refused by policy (do not reconnect)                            | SPEC §5   |
| 4409 | REPLACED       | replaced by a newer session of the same identity               | SPEC §5   |
| 4410 | VISIT_OVER     | visit over                                                      | SPEC §5   |
| 4413 | TOO_LARGE      | message too large                                               | SPEC §5   |
| 4429 | RATE_LIMITED   | rate limited                                                    | SPEC §5   |
| 4502 | MEDIA_FAILED   | media could not be established (`error` `media-failed`; retry)  | SPEC §5   |
| 4503 | UNAVAILABLE    | node unavailable or overloaded (retry later)                    | SPEC §5   |

Clients must not reconnect after 4401, 4403, 4410 (SPEC §5) nor after 4409 (the newer
session goes on elsewhere): `NO_RECONNECT`.

An error the server words itself is a `Problem`: its code, the text shown (a template filled
with the values of the moment) and the close code that follows it, if any. Admission turns
one into a `Refusal` (signaling/admission.py); a problem with no close code is answered and
the session goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from policy.directive import Directive
from policy.rfc3339 import format_time


class Close(IntEnum):
    """WebSocket close codes (the table above)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INTERNAL_ERROR = 1011
    REDIRECT = 4307
    PROTOCOL_ERROR = 4400
    BAD_TOKEN = 4401
    REFUSED = 4403
    REPLACED = 4409
    VISIT_OVER = 4410
    TOO_LARGE = 4413
    RATE_LIMITED = 4429
    MEDIA_FAILED = 4502
    UNAVAILABLE = 4503


NO_RECONNECT = (Close.BAD_TOKEN, Close.REFUSED, Close.REPLACED, Close.VISIT_OVER)


class Message(StrEnum):
    """The `type` of every frame on `/ws` and `/api/v1/events`."""

    # client -> server on /ws
    JOIN = "join"
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    LEAVE = "leave"
    # a kiosk's presence connection on /ws (signaling/presence.py): PRESENCE first, then
    # HEARTBEAT every `heartbeat_seconds`; the server answers PRESENT, then echoes each HEARTBEAT
    PRESENCE = "presence"
    HEARTBEAT = "heartbeat"
    PRESENT = "present"
    # server -> client on /ws (and OFFER, ANSWER)
    JOINED = "joined"
    PARTICIPANT_JOINED = "participant-joined"
    PARTICIPANT_LEFT = "participant-left"
    TIME_REMAINING = "time-remaining"
    RESTRICTED = "restricted"
    HOLD = "hold"  # to a minor: waiting for, paused without, or back with a guardian
    PARTICIPANT_STATE = "participant-state"  # to the others: a minor held back or let in
    TERMINATED = "terminated"
    ERROR = "error"
    REDIRECT = "redirect"
    # the staff event stream (/api/v1/events)
    AUTH = "auth"
    READY = "ready"
    EVENT = "event"


class Error(StrEnum):
    """Every error code signaling sends: in `error` frames and in REST error bodies. (The
    domain's own refusals, `policy.errors.PolicyError`, carry codes of their own.)"""

    # before or at the join
    JOIN_TIMEOUT = "join-timeout"
    BAD_FRAME = "bad-frame"
    JOIN_REQUIRED = "join-required"
    MESSAGE_TOO_LARGE = "message-too-large"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    BAD_TOKEN = "bad-token"
    EXPIRED_TOKEN = "expired-token"
    TOKEN_NOT_YET_VALID = "token-not-yet-valid"
    MISSING_TOKEN = "missing-token"
    BAD_MODE = "bad-mode"
    BAD_VISIT = "bad-visit"
    UNKNOWN_VISIT = "unknown-visit"
    VISIT_OVER = "visit-over"
    NOT_OPEN_YET = "not-open-yet"
    SUSPENDED = "suspended"
    ENDED = "ended"  # a session ended while it was being admitted (why: the message)
    REPLACED = "replaced"
    TOO_MANY_SESSIONS = "too-many-sessions"
    VISIT_FULL = "visit-full"
    FORBIDDEN = "forbidden"
    PRIVILEGED = "privileged"
    WRONG_VISIT = "wrong-visit"
    WRONG_DEVICE = "wrong-device"
    NOT_APPROVED = "not-approved"  # the contact's approval for the inmate was denied or withdrawn
    GUARDIAN_REQUIRED = "guardian-required"  # a minor none of whose guardians may visit
    VISIT_CANCELLED = "visit-cancelled"
    # a kiosk's presence connection
    UNKNOWN_DEVICE = "unknown-device"
    HEARTBEAT_MISSED = "heartbeat-missed"
    # during a session
    BAD_JSON = "bad-json"
    BINARY_NOT_SUPPORTED = "binary-not-supported"
    UNKNOWN_TYPE = "unknown-type"
    ALREADY_JOINED = "already-joined"
    BAD_SDP = "bad-sdp"
    UNEXPECTED_ANSWER = "unexpected-answer"
    NEGOTIATION_IN_PROGRESS = "negotiation-in-progress"
    BAD_CANDIDATE = "bad-candidate"
    NOT_NEGOTIATED = "not-negotiated"
    UNSUPPORTED_OFFER = "unsupported-offer"
    MEDIA_FAILED = "media-failed"
    # the staff event stream
    AUTH_TIMEOUT = "auth-timeout"
    AUTH_REQUIRED = "auth-required"
    # the REST API
    ROLE_NOT_ALLOWED = "role-not-allowed"
    BODY_TOO_LARGE = "body-too-large"
    BAD_QUERY = "bad-query"
    BODY_TIMEOUT = "body-timeout"
    NO_VISIT = "no-visit"
    UNKNOWN_SESSION = "unknown-session"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Problem:
    """An error as the server words it: code, text (a `str.format` template) and the close
    code that follows it (None: the session goes on)."""

    code: Error
    text: str
    close: Close | None = None

    def message(self, **values: Any) -> str:
        return self.text.format(**values)

    def frame(self, **values: Any) -> dict[str, Any]:
        """The `error` frame."""
        return {"type": Message.ERROR, "code": self.code, "message": self.message(**values)}


# -- admission (signaling/admission.py) ---------------------------------------------------
JOIN_TIMEOUT = Problem(Error.JOIN_TIMEOUT, "send a join message first", Close.PROTOCOL_ERROR)
BAD_FIRST_FRAME = Problem(
    Error.BAD_FRAME, "the first message must be a JSON join message", Close.PROTOCOL_ERROR
)
FIRST_TOO_LARGE = Problem(
    Error.MESSAGE_TOO_LARGE, "messages are limited to {limit} bytes", Close.TOO_LARGE
)
JOIN_REQUIRED = Problem(
    Error.JOIN_REQUIRED, 'the first message must be {{"type": "join", ...}}', Close.PROTOCOL_ERROR
)
JOINS_FROM_ADDRESS = Problem(
    Error.RATE_LIMITED,
    "too many joins from this address; retry in {wait:.0f} s",
    Close.RATE_LIMITED,
)
JOINS_OF_IDENTITY = Problem(
    Error.RATE_LIMITED, "too many joins; retry in {wait:.0f} s", Close.RATE_LIMITED
)
STORE_UNREACHABLE = Problem(
    Error.UNAVAILABLE, "the server cannot reach its store; try again shortly", Close.UNAVAILABLE
)
STORE_FAILED = Problem(Error.UNAVAILABLE, "{cause}", Close.UNAVAILABLE)
BAD_MODE = Problem(Error.BAD_MODE, "mode must be 'monitor' or absent", Close.PROTOCOL_ERROR)
BAD_VISIT = Problem(Error.BAD_VISIT, "join needs the visit id", Close.PROTOCOL_ERROR)
UNKNOWN_VISIT = Problem(Error.UNKNOWN_VISIT, "no visit {visit!r}", Close.REFUSED)
VISIT_OVER = Problem(Error.VISIT_OVER, "this visit has ended", Close.VISIT_OVER)
NOT_OPEN_YET = Problem(Error.NOT_OPEN_YET, "this visit opens at {starts_at}", Close.REFUSED)
SUSPENDED = Problem(Error.SUSPENDED, "suspended until {expires_at}: {reason}", Close.REFUSED)
TOO_MANY_SESSIONS = Problem(
    Error.TOO_MANY_SESSIONS,
    "at most {limit} live sessions per person or device; leave another call first",
    Close.RATE_LIMITED,
)
AT_CALL_LIMIT = Problem(
    Error.OVERLOADED,
    "this server is at its limit of {limit} calls; try again shortly",
    Close.UNAVAILABLE,
)
LOOP_LATE = Problem(
    Error.OVERLOADED,
    "this server is too busy to start a call (event loop {lag_ms:.0f} ms late); try again shortly",
    Close.UNAVAILABLE,
)
VISIT_FULL = Problem(
    Error.VISIT_FULL, "this visit already has the maximum number of participants", Close.REFUSED
)
MONITOR_STAFF_ONLY = Problem(
    Error.FORBIDDEN, "only operators and supervisors can monitor", Close.REFUSED
)
PRIVILEGED = Problem(Error.PRIVILEGED, "privileged visits are never monitored", Close.REFUSED)
WRONG_VISIT = Problem(Error.WRONG_VISIT, "this link is for another visit", Close.REFUSED)
WRONG_DEVICE = Problem(Error.WRONG_DEVICE, "this visit is at another kiosk", Close.REFUSED)
ROLE_CANNOT_JOIN = Problem(
    Error.FORBIDDEN, "role {role} cannot join calls (staff join with mode 'monitor')", Close.REFUSED
)
NOT_APPROVED = Problem(
    Error.NOT_APPROVED,
    "The facility has withdrawn your approval to visit, so you cannot join this visit.",
    Close.REFUSED,
)
VISIT_CANCELLED = Problem(
    Error.VISIT_CANCELLED, "This visit was cancelled by the facility: {why}", Close.VISIT_OVER
)
GUARDIAN_REQUIRED = Problem(
    Error.GUARDIAN_REQUIRED,
    "You can join this visit only with your guardian, and none of your guardians on it may "
    "visit now.",
    Close.REFUSED,
)

# -- a kiosk's presence connection (signaling/presence.py) ----------------------------------
PRESENCE_KIOSKS_ONLY = Problem(
    Error.FORBIDDEN, "only a kiosk's device token holds a presence connection", Close.REFUSED
)
PRESENCE_UNKNOWN_DEVICE = Problem(Error.UNKNOWN_DEVICE, "no kiosk {device!r}", Close.REFUSED)
PRESENCE_REPLACED = Problem(
    Error.REPLACED, "this kiosk opened a newer presence connection", Close.REPLACED
)
HEARTBEAT_MISSED = Problem(
    Error.HEARTBEAT_MISSED, "no heartbeat for {seconds:.0f} s", Close.PROTOCOL_ERROR
)
PRESENCE_ONLY = Problem(Error.UNKNOWN_TYPE, "a presence connection only sends heartbeats")

# -- during a session (signaling/ws.py) ----------------------------------------------------
BAD_JSON = Problem(Error.BAD_JSON, "messages must be JSON objects with a string 'type'")
BINARY_NOT_SUPPORTED = Problem(Error.BINARY_NOT_SUPPORTED, "only JSON text frames are accepted")
UNKNOWN_TYPE = Problem(Error.UNKNOWN_TYPE, "unknown message type")
ALREADY_JOINED = Problem(Error.ALREADY_JOINED, "this socket has already joined")
BAD_SDP = Problem(Error.BAD_SDP, "sdp must be a string of at most 32 KiB")
UNEXPECTED_ANSWER = Problem(Error.UNEXPECTED_ANSWER, "there is no server offer to answer")
NEGOTIATION_IN_PROGRESS = Problem(
    Error.NEGOTIATION_IN_PROGRESS, "answer the server's offer first, then send yours"
)
BAD_CANDIDATE = Problem(
    Error.BAD_CANDIDATE, "candidate must be an ICE candidate string with sdpMid or sdpMLineIndex"
)
NOT_NEGOTIATED = Problem(Error.NOT_NEGOTIATED, "send an offer first")
UNSUPPORTED_OFFER = Problem(Error.UNSUPPORTED_OFFER, "{cause}")
# The peer connection could not be set up or died (ICE, DTLS): not final, the client may retry.
MEDIA_FAILED = Problem(
    Error.MEDIA_FAILED, "The video connection could not be kept up: {cause}.", Close.MEDIA_FAILED
)
MEDIA_FAILED_CAUSE = "the media connection failed"  # when the peer cannot say why
MESSAGE_TOO_LARGE = Problem(
    Error.MESSAGE_TOO_LARGE, "messages are limited to {limit} bytes", Close.TOO_LARGE
)

# -- the staff event stream (signaling/events.py) ------------------------------------------
AUTH_REQUIRED = Problem(
    Error.AUTH_REQUIRED, "send {{type: auth, token}} first", Close.PROTOCOL_ERROR
)
STAFF_AND_AUDITORS_ONLY = Problem(Error.FORBIDDEN, "staff and auditors only", Close.REFUSED)
STREAM_STORE_UNREACHABLE = Problem(
    Error.UNAVAILABLE,
    "the server cannot read its store; reconnect shortly with the last seq you saw",
    Close.UNAVAILABLE,
)

# -- the REST API (signaling/api.py, signaling/app.py) -------------------------------------
API_RATE_LIMITED = Problem(Error.RATE_LIMITED, "too many requests; slow down")
API_STORE_UNREACHABLE = Problem(Error.UNAVAILABLE, "the store cannot be reached; try again shortly")
API_SUSPENDED = Problem(Error.SUSPENDED, "suspended by a directive")
API_NOT_APPROVED = Problem(
    Error.NOT_APPROVED, "the facility has withdrawn this contact's approval for the inmate"
)
API_VISIT_CANCELLED = Problem(Error.VISIT_CANCELLED, "this visit was cancelled")
API_INTERNAL = Problem(Error.INTERNAL, "internal error")
API_BODY_TIMEOUT = Problem(Error.BODY_TIMEOUT, "the request body did not arrive in time")
NO_VISIT_AT_KIOSK = Problem(Error.NO_VISIT, "no visit at this kiosk right now")


# -- why a session ended (SPEC §2), and what its person is told -----------------------------
class Reason(StrEnum):
    """End reasons recorded for a session. Two more are made of an id: `directive:<id>`
    (`directive_reason`) and `operator:<sub>` (the operator's own subject)."""

    LEFT = "left"
    VISIT_ENDED = "visit-ended"
    REPLACED = "replaced"
    APPROVAL_WITHDRAWN = "approval-withdrawn"
    GUARDIAN_LEFT = "guardian-left"
    MEDIA_FAILED = "media-failed"
    ERROR = "error"


def directive_reason(directive: Directive) -> str:
    return f"directive:{directive.id}"


STAFF_ENDED = "Facility staff ended this call."
RESTARTING = "The server is restarting."
TOO_MANY_ERRORS = "too many protocol errors"
TOO_LARGE_ENDED = "message too large"
ENDED = "The call ended."
TOLD: dict[str, str] = {
    Reason.LEFT: "You left the call.",
    Reason.VISIT_ENDED: "The visit's time is over.",
    Reason.REPLACED: "You joined this call from another window or device.",
    Reason.ERROR: "The call ended because of an error.",
    Reason.MEDIA_FAILED: "media failed",
    Reason.APPROVAL_WITHDRAWN: "The facility has withdrawn the approval for this visit, so the call has ended.",
    Reason.GUARDIAN_LEFT: "Your guardian left the call and did not come back in time, so the call has ended.",
}


# What a minor is told while held back (the `hold` message, signaling/enforcer.py).
HOLD_REASONS = {"waiting": "guardian-absent", "paused": "guardian-left"}


def hold_text(state: str, guardians: list[str], ends_in: float | None = None) -> str:
    """The words a minor's page shows while they wait for, or are paused without, a guardian."""
    who = " or ".join(guardians) if guardians else "your guardian"
    if state == "waiting":
        return f"Waiting for {who} to join."
    if state == "paused":
        return (
            f"Paused: your guardian left. The call ends in {ends_in or 0:.0f} s unless {who} "
            "comes back."
        )
    return ""


# Why a visit was cancelled, in the words its family is shown (policy.visit.CANCEL_REASONS and
# the server's own APPROVAL_WITHDRAWN); a note, when staff wrote one, follows.
CANCEL_WORDS: dict[str, str] = {
    "lockdown": "The facility is in lockdown.",
    "kiosk-maintenance": "The visiting kiosk is out of order.",
    "illness": "Illness.",
    "facility-closure": "The facility is closed.",
    "contact-request": "Cancelled at the visitor's request.",
    "other": "Other.",
    "approval-withdrawn": "The approval for this visit was withdrawn.",
}


def cancelled_text(reason: str | None, note: str | None) -> str:
    """Why a visit was cancelled: the reason's words, then the note (for `other`, the note)."""
    if reason == "other" and note:
        return note
    words = CANCEL_WORDS.get(reason or "", "No reason was given.")
    return f"{words} {note}" if note else words


def cancelled_ending(reason: str | None, note: str | None) -> str:
    """What a participant of a visit cancelled during the call is told."""
    return f"Facility staff cancelled this visit. {cancelled_text(reason, note)}"


def moved_ending(starts_at: str) -> str:
    """What a participant of a visit moved away from now is told."""
    return f"Facility staff moved this visit to {starts_at}."


MONITORED_NOTICE = "This visit may be monitored by facility staff."
RECORDED_NOTICE = "This call is recorded."
PRIVATE_NOTICE = "This is a privileged visit: it is private, never monitored and never recorded."


def ended_text(reason: str, directive: Directive | None = None) -> str:
    """What a person whose session ended is told (`terminated.message`), by default."""
    if directive is not None:
        return (
            f"This call was stopped by facility staff ({directive.action}) until "
            f"{format_time(directive.expires_at)}. Reason: {directive.reason}. "
            f"Legal basis: {directive.legal_basis}."
        )
    if reason.startswith("operator:"):
        return STAFF_ENDED
    return TOLD.get(reason, ENDED)
