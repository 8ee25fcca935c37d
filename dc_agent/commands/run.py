"""`dc-agent run`: load everything, fail early with one line on a config problem, then run the loop."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from dc_agent.commands.common import EXIT_CONFIG, fail


def build(config: Path | None, overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(settings, signing key, provisioner); raises ConfigFileError / provisioners.ConfigError."""
    from dc_agent import config as cfg
    from dc_agent import keys

    settings = cfg.load(config, overrides)
    key = keys.load(settings.private_key_path)
    driver = cfg.load_driver(settings)
    return settings, key, driver


def run_agent(*, config: Path | None, overrides: dict[str, Any], once: bool, log_format: str) -> int:
    from dc_agent.errors import ConfigFileError
    from provisioners import ConfigError

    try:
        settings, key, driver = build(config, overrides)
    except (ConfigFileError, ConfigError) as exc:
        fail("run", str(exc))
        return EXIT_CONFIG

    from dc_agent import log as logmod
    from dc_agent.api import connect
    from dc_agent.keys import loose_permissions
    from dc_agent.loop import Agent
    from dc_agent.outbox import Outbox
    from dc_agent.state import AgentState, StateDirLock

    json_output = {"json": True, "console": False}.get(log_format)
    logmod.configure(settings.log_level, json_output=json_output)
    log = logmod.get(agent=settings.label or key.verify_key.encode().hex()[:12])
    warning = loose_permissions(settings.private_key_path)
    if warning:
        log.warning("agent key permissions are too open", detail=warning)

    lock = StateDirLock(settings.state_dir)
    try:
        lock.acquire()
    except ConfigFileError as exc:
        fail("run", str(exc))
        return EXIT_CONFIG
    except OSError as exc:
        fail("run", f"cannot use the state directory {settings.state_dir}: {exc.strerror or exc}; "
                    "fix its permissions or set [agent] state_dir")
        return EXIT_CONFIG

    async def main() -> tuple[int, bool]:
        client = connect(settings, key)
        agent = Agent(settings, client, driver, outbox=Outbox(settings.state_dir),
                      state=AgentState(settings.state_dir), log=log)
        try:
            code = await agent.run(once=once)
        finally:
            await client.aclose()
        return code, agent.unfinished_threads

    try:
        code, unfinished = asyncio.run(main())
    except ConfigFileError as exc:
        fail("run", str(exc))
        return EXIT_CONFIG
    finally:
        lock.release()
    if unfinished:  # a driver thread would keep the interpreter alive: leave now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 1)
    return code
