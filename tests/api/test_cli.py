"""The `parlor` console script, run as a real subprocess (SPEC §7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from policy.audit import GENESIS, seal
from signaling.tokens import Tokens
from tests.harness.ports import free_port

PARLOR = Path(sys.executable).with_name("parlor")
SECRET = "cli-test-secret-that-is-long-enough-0123456789"


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLOR_")}
    return {**env, **values}


def parlor(
    *args: str, cwd: Path | None = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    command = [str(PARLOR)] if PARLOR.exists() else [sys.executable, "-m", "signaling.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parlor"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


# -- parlor token -------------------------------------------------------------------------------
def test_token_prints_a_verifiable_token(tmp_path):
    result = parlor("token", "--sub", "operator:alice", "--role", "supervisor", "--ttl", "120",
                    cwd=tmp_path, PARLOR_SECRET=SECRET)  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    claims = Tokens(SECRET.encode()).verify(token)
    assert (claims.actor.sub, claims.actor.role) == ("operator:alice", "supervisor")
    assert claims.expires_at - claims.issued_at == 120
    family = parlor(
        "token",
        "--sub",
        "contact:C1",
        "--role",
        "family",
        "--visit",
        "V1",
        cwd=tmp_path,
        PARLOR_SECRET=SECRET,
    )
    assert Tokens(SECRET.encode()).verify(family.stdout.strip()).actor.visit == "V1"


# name -> (arguments, environment, words the one-line message must contain)
BAD_INPUTS = {
    "unknown-flag": (
        ["token", "--sub", "operator:a", "--role", "operator", "--bogus"],
        {},
        ["--bogus"],
    ),
    "bad-role": (["token", "--sub", "operator:a", "--role", "admin"], {}, ["--role"]),
    "family-without-visit": (["token", "--sub", "contact:C1", "--role", "family"], {}, ["visit"]),
    "short-secret": (
        ["token", "--sub", "operator:a", "--role", "operator"],
        {"PARLOR_SECRET": "short"},
        ["PARLOR_SECRET", "32"],
    ),
    "no-secret": (["serve"], {"PARLOR_SECRET": None}, ["PARLOR_SECRET", "parlor demo"]),
    "port-flag": (["serve", "--port", "http"], {}, ["--port"]),
    "codec-flag": (["serve", "--codec", "AV1"], {"PARLOR_CODEC": "VP8"}, ["PARLOR_CODEC"]),
    "ice-servers-env": (["serve"], {"PARLOR_ICE_SERVERS": "{not json"}, ["PARLOR_ICE_SERVERS"]),
    "port-env": (["serve"], {"PARLOR_PORT": "eighty"}, ["port"]),
    "audit-missing-db": (["audit", "verify", "--db", "typo.db"], {}, ["no database", "typo.db"]),
}


@pytest.fixture(scope="module")
def bad_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[subprocess.Popen[str], Path]]]:
    """Start every refused invocation at once: each is a fresh interpreter, and in sequence
    their start-up would dominate the suite's time."""
    command = [str(PARLOR)] if PARLOR.exists() else [sys.executable, "-m", "signaling.cli"]
    runs = {}
    for name, (args, env, _) in BAD_INPUTS.items():
        directory = tmp_path_factory.mktemp(name)
        values = {"PARLOR_SECRET": SECRET, "PARLOR_DB": str(directory / "parlor.db"), **env}
        environment = clean_env(**{k: v for k, v in values.items() if v is not None})
        process = subprocess.Popen(
            [*command, *args], cwd=directory, env=environment, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        runs[name] = (process, directory)
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_flag_or_environment_is_one_line_and_exit_2(bad_runs, name):
    process, directory = bad_runs[name]
    out, err = process.communicate(timeout=30)
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert_usage_error(result, *BAD_INPUTS[name][2])
    assert not (directory / "parlor.db").exists()  # refused before any store was opened
    assert not (directory / "typo.db").exists()


# -- parlor demo, serve, audit verify ---------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`parlor demo` in an empty directory with no PARLOR_SECRET; a relative PARLOR_DB.
    Run once for the module: tests that change the database work on a copy."""
    directory = tmp_path_factory.mktemp("demo")
    port = free_port()
    result = parlor("demo", "--port", str(port), cwd=directory, PARLOR_DB="var/parlor.db")
    assert result.returncode == 0, result.stderr
    return {"dir": directory, "port": port, "out": result.stdout}


def test_demo_stores_a_private_secret_and_prints_the_links(demo):
    secret_file = demo["dir"] / "var" / "secret"
    assert secret_file.exists() and (demo["dir"] / "var" / "parlor.db").exists()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    tokens = Tokens(secret_file.read_bytes().strip())

    urls = [word for word in demo["out"].split() if word.startswith("http://")]
    family, kiosk, console = urls
    base = f"http://127.0.0.1:{demo['port']}"
    visit = urlsplit(family).path.removeprefix("/join/")
    assert visit.startswith("V-") and f"Demo visit {visit}" in demo["out"]

    for url, path, sub, role in ((family, f"/join/{visit}", "contact:C-DEMO", "family"),
                                 (kiosk, "/kiosk", "device:K-DEMO", "kiosk"),
                                 (console, "/console", "operator:demo", "operator")):  # fmt: skip
        parts = urlsplit(url)
        assert (
            f"{parts.scheme}://{parts.netloc}" == base and parts.path == path and parts.query == ""
        )
        assert parts.fragment.startswith("token=")
        claims = tokens.verify(parts.fragment.removeprefix("token="))
        assert (claims.actor.sub, claims.actor.role) == (sub, role)
    assert tokens.verify(urlsplit(family).fragment[6:]).actor.visit == visit

    # A second run reuses the roster and the secret and adds a new visit.
    again = parlor("demo", "--json", cwd=demo["dir"], PARLOR_DB="var/parlor.db")
    assert again.returncode == 0, again.stderr
    links = json.loads(again.stdout)
    assert links["visit"] != visit and set(links) >= {"visit", "family", "kiosk", "console"}
    assert tokens.verify(urlsplit(links["console"]).fragment[6:]).actor.role == "operator"


def test_serve_answers_the_printed_family_link(demo):
    family = next(w for w in demo["out"].split() if "/join/" in w)
    port = demo["port"]
    command = [str(PARLOR)] if PARLOR.exists() else [sys.executable, "-m", "signaling.cli"]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)], cwd=demo["dir"],
        env=clean_env(PARLOR_DB="var/parlor.db", PARLOR_ICE_ADDRESSES="127.0.0.1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30  # generous: aiortc imports are slow on a busy machine
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "parlor serve did not start in time"
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["ok"] is True
        parts = urlsplit(family)
        status, page = get(f"{parts.scheme}://{parts.netloc}{parts.path}")
        assert status == 200 and b"<html" in page.lower()
        status, ready = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and json.loads(ready)["ready"] is True
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"parlor serve did not stop on SIGINT: {err}")
    assert "Traceback" not in err, err
    assert f"127.0.0.1:{port}" in out


def test_audit_verify_exit_codes(demo, tmp_path):
    # Only the database is copied: verifying needs no secret (an auditor has none).
    (tmp_path / "var").mkdir()
    for file in (demo["dir"] / "var").glob("parlor.db*"):
        shutil.copy(file, tmp_path / "var" / file.name)
    good = parlor("audit", "verify", cwd=tmp_path, PARLOR_DB="var/parlor.db")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["ok"] is True and report["events"] >= 6 and report["first_bad"] is None

    with sqlite3.connect(tmp_path / "var" / "parlor.db") as conn:
        conn.execute("UPDATE audit SET actor = 'operator:mallory' WHERE seq = 2")
    bad = parlor("audit", "verify", "--db", "var/parlor.db", cwd=tmp_path)
    assert bad.returncode == 1, bad
    assert json.loads(bad.stdout) == {
        "ok": False, "events": report["events"], "first_bad": 2,
        "head": report["head"], "anchors_checked": 0, "chain_ok": False,
        "state": {"ok": True, "disagreements": [], "unreplayed": {}},
    }  # fmt: skip


def test_audit_verify_is_read_only_and_checks_anchors(demo, tmp_path):
    (tmp_path / "var").mkdir()
    for file in (demo["dir"] / "var").glob("parlor.db*"):
        shutil.copy(file, tmp_path / "var" / file.name)
    db = tmp_path / "var" / "parlor.db"
    good = json.loads(parlor("audit", "verify", "--db", str(db), cwd=tmp_path).stdout)
    head = good["head"]
    assert head["seq"] == good["events"] and len(head["hash"]) == 64
    anchor = f"{head['seq']}:{head['hash']}"
    anchored = parlor("audit", "verify", "--db", str(db), "--anchor", anchor, cwd=tmp_path)
    assert anchored.returncode == 0 and json.loads(anchored.stdout)["anchors_checked"] == 1

    # Someone with write access rewrites event 2 and seals the whole chain again: in itself
    # the chain verifies; against the head an auditor recorded earlier, it does not.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        prev = GENESIS
        for seq, at, actor, action, subject, data, _, _ in rows:
            if seq == 2:
                actor = "operator:mallory"
            digest = seal(seq, at, actor, action, subject, json.loads(data), prev)
            conn.execute(
                "UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (actor, prev, digest, seq),
            )
            prev = digest
        conn.execute("UPDATE audit_head SET hash = ? WHERE id = 1", (prev,))
    assert parlor("audit", "verify", "--db", str(db), cwd=tmp_path).returncode == 0
    caught = parlor("audit", "verify", "--db", str(db), "--anchor", anchor, cwd=tmp_path)
    assert caught.returncode == 1 and json.loads(caught.stdout)["first_bad"] == head["seq"]

    # verifying never writes: the database refuses it (a read-only connection)
    before = db.read_bytes()
    assert parlor("audit", "verify", "--db", str(db), cwd=tmp_path).returncode == 0
    assert db.read_bytes() == before
    refused = parlor("audit", "verify", "--db", str(db), "--anchor", "2:nothex", cwd=tmp_path)
    assert refused.returncode == 2 and "SEQ:HASH" in refused.stderr
