"""Packet loss on a loopback of one's own: a network namespace with a lossy ``lo``.

``unshare --net`` gives a process (and its children: a server, a browser) a network
namespace whose only interface is a loopback nobody else uses, so loss added to it touches
nothing outside. The loss is ``tc qdisc add dev lo root netem loss P%`` where the kernel has
netem; a kernel without it (this project's build VMs) gets the same random drop from what it
does have: an HTB root whose filter, a classic-BPF program reading the kernel's random
number (``ld rand``), files P % of packets into a class whose queue holds nothing
(``pfifo limit 0``), so they are dropped; the rest pass untouched.

:func:`run_with_loss` re-executes a command (``python -m ...``) inside such a namespace and
returns what it printed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass

SKF_AD_RANDOM = 0xFFFFF000 + 56
"""Classic BPF's ancillary load of a random u32 (``ld rand``)."""


def loss_setup(fraction: float) -> str:
    """Shell commands that bring ``lo`` up and make it lose ``fraction`` of its packets."""
    percent = round(fraction * 100, 3)
    keep_below = int((1 - fraction) * 2**32)
    # ld rand; jge #keep_below -> drop class (ret -1 = the filter's classid) else ret 0.
    program = f"4,32 0 0 {SKF_AD_RANDOM},53 0 1 {keep_below},6 0 0 4294967295,6 0 0 0,"
    return "\n".join(
        [
            "set -e",
            "ip link set lo up",
            f"if tc qdisc add dev lo root netem loss {percent}% 2>/dev/null; then",
            '  echo netem > "$PARLOR_LOSS_METHOD"',
            "else",
            "  tc qdisc add dev lo root handle 1: htb default 1",
            "  tc class add dev lo parent 1: classid 1:1 htb rate 10gbit 2>/dev/null",
            "  tc class add dev lo parent 1: classid 1:2 htb rate 10gbit 2>/dev/null",
            "  tc qdisc add dev lo parent 1:2 pfifo limit 0",
            f'  tc filter add dev lo parent 1: protocol all prio 1 bpf bytecode "{program}" classid 1:2',
            '  echo htb+bpf > "$PARLOR_LOSS_METHOD"',
            "fi",
        ]
    )


def missing() -> str | None:
    """What a lossy namespace needs and this machine lacks, or None."""
    absent = [tool for tool in ("unshare", "tc", "ip") if shutil.which(tool) is None]
    if absent:
        return f"not on PATH: {', '.join(absent)} (apt-get install iproute2 util-linux)"
    if os.geteuid() != 0:
        return "network namespaces with tc need root"
    return None


@dataclass
class LossyRun:
    returncode: int
    stdout: str
    stderr: str
    method: str
    """``netem`` or ``htb+bpf``: how the loss was made."""


async def run_with_loss(argv: list[str], fraction: float, timeout: float, cwd: str) -> LossyRun:
    """Run ``argv`` in a new network namespace whose loopback loses ``fraction`` of packets."""
    import shlex
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".method") as method:
        script = loss_setup(fraction) + "\nexec " + " ".join(shlex.quote(a) for a in argv)
        process = await asyncio.create_subprocess_exec(
            "unshare", "--net", "sh", "-c", script,
            cwd=cwd, env={**os.environ, "PARLOR_LOSS_METHOD": method.name},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            out, err = await process.communicate()
            err += f"\n(timed out after {timeout} s)".encode()
        return LossyRun(
            returncode=process.returncode if process.returncode is not None else -1,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            method=method.read().strip(),
        )


if __name__ == "__main__":  # a quick check: python -m tests.harness.netns
    probe = "import socket;print('ok')"
    result = asyncio.run(run_with_loss([sys.executable, "-c", probe], 0.03, 30, os.getcwd()))
    print(result)
