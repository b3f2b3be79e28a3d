"""A Chromium → relay → Chromium call on a loopback that loses 3 % of its packets.

The relay repairs loss on both of its sides: it NACKs its own losses from the publisher,
answers the subscriber's NACKs from each leg's history (as RTX), and forwards a probe that
happens to carry a packet it lost. A viewer then sees no freeze longer than a second.

The call runs in a network namespace of its own (``tests.harness.netns``), so the loss
touches nothing else on the machine; the test re-executes ``tests.harness.losscall``
inside it and reads what it printed.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.harness import netns
from tests.harness.system import require

pytestmark = [
    pytest.mark.browser,
    require("chromium", "netem"),
    pytest.mark.asyncio,
]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_three_percent_loss_freezes_no_video_longer_than_a_second() -> None:
    run = await netns.run_with_loss(
        [sys.executable, "-m", "tests.harness.losscall", "--seconds", "20"],
        0.03,
        timeout=180,
        cwd=REPO,
    )
    assert run.returncode == 0, f"the call failed ({run.method}):\n{run.stderr[-4000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for name, page in result["pages"].items():
        video = page["inbound_video"]
        assert video["framesDecodedDuringRun"] >= 20 * 10, f"{name} barely played: {page}"
        assert video["nackCount"] > 0, f"no loss reached {name}: the namespace lost nothing"
        assert page["longest_freeze_s"] < 1.0, f"{name} froze {page['longest_freeze_s']} s: {page}"
    assert result["relay"]["packets_retransmitted"] > 0, "the relay answered no NACK"
    assert result["relay"]["nacks_sent"] > 0, "the relay NACKed none of its own losses"
