"""System software some suites need (browsers, GStreamer, PostgreSQL, netem), and what
happens when it is missing.

A suite says what it needs, by name:

    from tests.harness.system import require

    pytestmark = [require("firefox")]             # every test of the module
    @require("gstreamer", "chromium")             # one test
    def test_...

and a fixture that finds out late can call `need("postgresql")` itself. When something is
missing, the test is skipped with a reason that names what is missing and how to get it
(`bash .ci/run` installs all of it); at the end of the run a summary lists every suite
skipped that way. Under `CI=true` a missing requirement fails the test instead: a CI run
whose install step forgot a package can never pass as green.

Names: `chromium`, `firefox`, `gstreamer`, `postgresql`, `netem`. A test may also pass a
`Requirement` of its own.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import gstreamer
from tests.harness.gstreamer import SYSTEM_PYTHON

TESTS = Path(__file__).resolve().parent.parent
ARTIFACTS = TESTS / "artifacts"  # screenshots and logs a person can look at after a run

CHROMIUM = Path("/usr/bin/chromium")
FIREFOX = Path("/usr/bin/firefox-esr")

MARKER = "requires"
REASON_PREFIX = "missing system software: "
CI_VALUES = {"1", "true", "yes"}


@dataclass(frozen=True)
class Requirement:
    """Something outside the Python environment. `missing()` returns None when it is there,
    else a few words on what is not."""

    name: str
    what: str
    install: str
    missing: Callable[[], str | None]

    def reason(self, missing: str) -> str:
        """The skip reason; `summary_lines` groups skipped tests by it."""
        return f"{REASON_PREFIX}{self.what} ({missing}); get it with `{self.install}` (bash .ci/run does)"


def program(path: Path) -> Callable[[], str | None]:
    """A `Requirement.missing` for an executable at `path`."""
    return lambda: None if os.access(path, os.X_OK) else f"no {path}"


def _firefox() -> str | None:
    if not os.access(FIREFOX, os.X_OK):
        return f"no {FIREFOX}"
    if importlib.util.find_spec("marionette_driver") is None:
        return "no Python package marionette_driver: pip install -e '.[test]'"
    return None


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL bin directory with initdb, pg_ctl and postgres, or None."""
    preferred = Path("/usr/lib/postgresql/15/bin")
    candidates = [preferred] + sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")), reverse=True
    )
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _postgresql() -> str | None:
    if postgres_bindir() is None:
        return "no initdb, pg_ctl and postgres under /usr/lib/postgresql/*/bin"
    return None


def _netem() -> str | None:
    from tests.harness.netns import missing  # tools, and the root a namespace with tc needs

    return missing()


REQUIREMENTS = {
    r.name: r
    for r in (
        Requirement("chromium", f"Chromium at {CHROMIUM}", "apt-get install chromium", program(CHROMIUM)),
        Requirement("firefox", f"Firefox ESR at {FIREFOX}", "apt-get install firefox-esr", _firefox),
        Requirement(
            "gstreamer",
            f"GStreamer 1.x with webrtcbin and libnice, usable from {SYSTEM_PYTHON} (gi)",
            gstreamer.INSTALL,
            gstreamer.gstreamer_missing,
        ),
        Requirement("postgresql", "PostgreSQL server binaries", "apt-get install postgresql", _postgresql),
        Requirement("netem", "tc (netem) and unshare", "apt-get install iproute2 util-linux", _netem),
    )
}  # fmt: skip


def _requirement(wanted: str | Requirement) -> Requirement:
    if isinstance(wanted, Requirement):
        return wanted
    try:
        return REQUIREMENTS[wanted]
    except KeyError:
        raise ValueError(f"unknown requirement {wanted!r}; known: {sorted(REQUIREMENTS)}") from None


@functools.cache
def _check(requirement: Requirement) -> str | None:
    return requirement.missing()


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def need(*wanted: str | Requirement) -> None:
    """Skip the running test (fail it under CI=true) unless every requirement is met."""
    for requirement in map(_requirement, wanted):
        missing = _check(requirement)
        if missing is None:
            continue
        reason = requirement.reason(missing)
        if under_ci():
            pytest.fail(f"{reason}. CI=true: a suite may not be skipped for missing software; "
                        "bash .ci/run installs it", pytrace=False)  # fmt: skip
        pytest.skip(reason)


def require(*wanted: str | Requirement) -> pytest.MarkDecorator:
    """A mark: the test (or, as `pytestmark`, the module) needs these; see `need`."""
    for requirement in wanted:
        _requirement(requirement)  # an unknown name is an error at import, not a skip
    return getattr(pytest.mark, MARKER)(*wanted)


def check_marks(item: pytest.Item) -> None:
    """`pytest_runtest_setup`'s part: apply every `require(...)` mark of the item."""
    for mark in item.iter_markers(MARKER):
        need(*mark.args)


def summary_lines(skipped: Iterable[pytest.TestReport]) -> list[str]:
    """For the terminal summary: per missing piece of software, how to get it and which
    suites (test files) were skipped for it, with their test counts."""
    groups: dict[str, dict[str, int]] = {}
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith(REASON_PREFIX):
            continue
        suite = report.nodeid.split("::")[0]
        files = groups.setdefault(reason.removeprefix(REASON_PREFIX), {})
        files[suite] = files.get(suite, 0) + 1
    lines = []
    for reason, files in sorted(groups.items()):
        lines.append(reason)
        lines += [
            f"    {suite} ({count} {'test' if count == 1 else 'tests'})"
            for suite, count in sorted(files.items())
        ]
    if lines:
        lines.append(
            "`bash .ci/run` installs all of these; under CI=true they fail instead of skipping."
        )
    return lines
