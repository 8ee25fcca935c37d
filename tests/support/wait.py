"""Polling with a deadline: how tests and benchmarks wait for a condition (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError, TimeoutError):
    """The condition did not hold before the deadline (an assertion failure in tests)."""


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.1, details: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until it returns something truthy and return that value.

    Raises WaitTimeout naming `what` (and, with `details`, what it returns: logs, state) after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if details is not None:
                message += "\n" + details()
            raise WaitTimeout(message)
        time.sleep(interval)
