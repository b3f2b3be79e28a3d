"""Acknowledged directives survive kill -9 (SPEC §4): 10 rounds of bench/durability.py.

Each round starts `parlor serve` as a subprocess on the same database, issues a directive
through the API and sends SIGKILL right after the 201; a last start checks every acknowledged
directive is present, still active, enforced on a real join (4403) and in a verifying audit
chain. `python bench/durability.py` runs the same procedure for 100 rounds.
"""

from __future__ import annotations

from bench.durability import run

ROUNDS = 10


async def test_acknowledged_directives_survive_kill_9_and_are_enforced(tmp_path):
    result = await run(ROUNDS, tmp_path)
    assert result["refused"] == [] and result["acknowledged"] == ROUNDS, result
    assert result["missing"] == [] and result["present"] == ROUNDS, result
    assert result["not_active"] == [] and result["active"] == ROUNDS, result
    assert result["not_enforced"] == {} and result["enforced"] == ROUNDS, result
    assert result["chain_ok"] is True, result
    assert result["server_log_problems"] == 0, result["server_log"]
