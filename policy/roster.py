"""The people and places a visit is made of: facilities, devices (kiosks), inmates, contacts."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from policy.errors import Malformed

ID_PATTERN = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
)  # fullmatch: "$" would allow a final "\n"


def check_id(value: object, field: str = "id") -> str:
    """Ids become parts of scope keys (`pair:I:C`), so they may not contain ':' or spaces."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise Malformed(
            "bad-id", f"{field} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return value


def check_text(value: object, field: str, *, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Malformed("missing-field", f"{field} is required and must be non-empty text")
    if len(value) > max_length:
        raise Malformed("too-long", f"{field} is longer than {max_length} characters")
    return value.strip()


def check_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise Malformed("bad-field", f"{field} must be true or false")
    return value


@dataclass(frozen=True)
class Facility:
    id: str
    name: str
    max_visit_seconds: float | None = None  # None: the server's default (Rules.max_visit_seconds)
    # Recording policy (SPEC §10, policy/recording.py): social visits recorded or not, how
    # long recordings are kept, and whether operators (not only supervisors and auditors)
    # may list and play them.
    recording: bool = True
    recording_retention_days: int = 180
    operators_play_recordings: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Device:
    id: str
    facility: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Inmate:
    id: str
    facility: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Contact:
    id: str
    name: str
    minor: bool
    approvals: dict[str, str]  # inmate id -> pending | approved | denied
    guardians: tuple[str, ...] = ()  # a minor's guardians: adult contacts (policy/guardian.py)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "guardians": list(self.guardians)}
