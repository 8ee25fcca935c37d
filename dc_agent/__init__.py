"""dc-agent: the Decent Cloud provisioning agent.

Kept import-free so that `dc-agent --help` and `--version` start fast; the modules that need
httpx, structlog or a driver import them themselves.
"""

__version__ = "0.1.0"
