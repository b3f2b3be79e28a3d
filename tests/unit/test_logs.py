"""What the node's log configuration lets through (signaling/logs.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from signaling.logs import CHATTY_LIBRARIES, configure


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in CHATTY_LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def test_aioice_s_per_check_lines_are_left_out_unless_the_node_logs_at_debug(
    restored_logging: None,
) -> None:
    configure("INFO")
    assert not logging.getLogger("aioice.ice").isEnabledFor(logging.INFO)
    assert logging.getLogger("aioice.ice").isEnabledFor(logging.WARNING)
    assert logging.getLogger("parlor.ws").isEnabledFor(logging.INFO)
    configure("ERROR")
    assert not logging.getLogger("aioice.ice").isEnabledFor(logging.WARNING)
    configure("DEBUG")
    assert logging.getLogger("aioice.ice").isEnabledFor(logging.DEBUG)
