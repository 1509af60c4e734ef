"""Polling helper for tests that wait on a server or a subprocess."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, probe: Callable[[], Any], wait_s: float = 60.0) -> Any:  # noqa: ANN401
    """``probe()``'s first truthy result, polled every 0.5 s; AssertionError after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {wait_s:g} s")
        time.sleep(0.5)
    return found
