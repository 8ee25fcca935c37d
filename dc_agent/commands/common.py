"""What commands share: printing a one-line error and exit statuses."""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG: the unit should not restart in a loop on a configuration error


def fail(command: str, message: str) -> None:
    """One line on stderr, no traceback."""
    print(f"dc-agent {command}: error: {message}", file=sys.stderr)
