"""RFC 3339 UTC timestamps at the edges; epoch seconds (float) inside."""

from __future__ import annotations

from datetime import UTC, datetime

from policy.errors import Malformed


def format_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, field: str) -> float:
    """Parse an RFC 3339 timestamp that carries an explicit offset ('Z' or ±hh:mm)."""
    if not isinstance(value, str) or not value:
        raise Malformed("bad-time", f"{field} must be an RFC 3339 timestamp string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise Malformed("bad-time", f"{field} is not an RFC 3339 timestamp: {value!r}") from exc
    if moment.tzinfo is None:
        raise Malformed("bad-time", f"{field} must carry a UTC offset, e.g. 'Z'")
    return moment.timestamp()


def parse_duration(value: str) -> float:
    """Parse '90s', '15m', '2h', '7d' (or combinations like '1h30m') into seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = value.strip().lower()
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in units and number:
            total += float(number) * units[char]
            number = ""
        else:
            raise Malformed("bad-duration", f"not a duration: {value!r} (use e.g. 30m, 2h, 7d)")
    if number or total <= 0:
        raise Malformed("bad-duration", f"not a duration: {value!r} (use e.g. 30m, 2h, 7d)")
    return total
