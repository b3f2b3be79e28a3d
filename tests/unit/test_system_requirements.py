"""tests/harness/system.py: a suite that needs software this machine lacks is skipped loudly,
with how to get it, and fails under CI=true. Checked by running a small suite that needs a
program that does not exist, in a pytest of its own with the project's own hooks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import system

REPO = Path(__file__).resolve().parents[2]

CONFTEST = "from tests.conftest import pytest_configure, pytest_runtest_setup, pytest_terminal_summary  # noqa: F401\n"  # fmt: skip
SUITE = """
from pathlib import Path

import pytest

from tests.harness.system import Requirement, need, program, require

FAKE = Requirement("fake", "the Parlor fake tool", "apt-get install parlor-fake",
                   program(Path("/nonexistent/parlor-fake")))
pytestmark = [require(FAKE)]


def test_one():
    raise AssertionError("must not run without the fake tool")


def test_two():
    raise AssertionError("must not run without the fake tool")


@pytest.fixture
def fake_tool():
    need(FAKE)
    raise AssertionError("need() must not return without the fake tool")
"""
FIXTURE_SUITE = """
from test_needs_fake import FAKE, fake_tool  # noqa: F401


def test_through_a_fixture(fake_tool):
    raise AssertionError("must not run without the fake tool")
"""


def run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_needs_fake.py").write_text(SUITE)
    (tmp_path / "test_needs_fake_too.py").write_text(FIXTURE_SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rN", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_missing_program_skips_its_suite_and_the_summary_says_how_to_get_it(
    tmp_path: Path,
) -> None:
    run = run_suite(tmp_path, ci=None)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "3 skipped" in out, out
    assert "suites skipped: system software missing" in out, out
    summary = out[out.index("suites skipped: system software missing") :]
    assert "the Parlor fake tool (no /nonexistent/parlor-fake)" in summary, summary
    assert "apt-get install parlor-fake" in summary and "bash .ci/run" in summary, summary
    assert "test_needs_fake.py (2 tests)" in summary, summary
    assert "test_needs_fake_too.py (1 test)" in summary, summary


def test_under_ci_a_missing_program_fails_instead(tmp_path: Path) -> None:
    run = run_suite(tmp_path, ci="true")
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "skipped" not in out.splitlines()[-1], out
    assert "3 errors" in out, out
    assert out.count("CI=true: a suite may not be skipped for missing software") >= 3, out
    assert "apt-get install parlor-fake" in out, out


def test_a_present_program_lets_the_test_run() -> None:
    here = system.Requirement("python", "this Python", "-", system.program(Path(sys.executable)))
    system.need(here)  # returns: nothing to skip


def test_an_unknown_name_is_an_error_where_it_is_written() -> None:
    with pytest.raises(ValueError, match="unknown requirement 'firefx'"):
        system.require("firefx")


def test_every_named_requirement_says_what_to_install() -> None:
    assert set(system.REQUIREMENTS) == {"chromium", "firefox", "gstreamer", "postgresql", "netem"}
    for requirement in system.REQUIREMENTS.values():
        assert requirement.install.startswith("apt-get install "), requirement
