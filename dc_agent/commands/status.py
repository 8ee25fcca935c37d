"""`dc-agent status`: one check per line (or `--json`), exit 0 only when healthy. Never prints a secret."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from dc_agent import __version__


def _ago(ns: int | None) -> str:
    if not ns:
        return "never"
    seconds = max(0.0, (time.time_ns() - int(ns)) / 1e9)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def collect(config: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    from dc_agent import config as cfg
    from dc_agent import keys
    from dc_agent.errors import ConfigFileError
    import provisioners

    report: dict[str, Any] = {"version": __version__, "healthy": False, "checks": {}, "problems": []}
    checks = report["checks"]
    problems: list[str] = report["problems"]
    report["configPath"] = str(cfg.resolve_config_path(config))
    try:
        settings = cfg.load(config, overrides)
    except ConfigFileError as exc:
        checks["config"] = False
        problems.append(str(exc))
        return report
    checks["config"] = True
    report["config"] = settings.public_view()
    report["provider"] = settings.provider_pubkey
    report["pool"] = {"id": settings.pool_id, "name": settings.pool_name}
    report["provisioner"] = {"type": settings.provisioner_type}

    # identity
    key = None
    try:
        key = keys.load(settings.private_key_path)
        report["agentPubkey"] = keys.public_hex(key)
        checks["key"] = True
        loose = keys.loose_permissions(settings.private_key_path)
        if loose:
            problems.append(loose)
    except ConfigFileError as exc:
        checks["key"] = False
        problems.append(str(exc))

    # the running agent (status.json + the state directory lock)
    from dc_agent.state import StateDirLock, read_status

    state = read_status(settings.state_dir) or {}
    running_pid = StateDirLock(settings.state_dir).held_by_other() if settings.state_dir.exists() else None
    outbox_dir = settings.state_dir / "outbox"
    backlog = len(list(outbox_dir.glob("*.json"))) if outbox_dir.exists() else 0
    report["agent"] = {
        "running": running_pid is not None,
        "pid": running_pid,
        "lastPollNs": state.get("lastPollNs"),
        "lastHeartbeatNs": state.get("lastHeartbeatNs"),
        "lastError": state.get("lastError"),
        "draining": state.get("draining", False),
        "inProgress": state.get("inProgress", {}) if running_pid else {},
        "counters": state.get("counters", {}),
        "conflictsByContract": state.get("conflictsByContract", {}),
    }
    report["outboxBacklog"] = backlog
    checks["agentRunning"] = running_pid is not None
    if not running_pid:
        problems.append("no `dc-agent run` process uses this state directory "
                        f"({settings.state_dir}): start it (systemctl start dc-agent)")
    else:
        # Alive: the loop rewrites status.json at least every 5 s. Talking to the API: a successful poll or
        # heartbeat recently (a busy agent with every slot taken does not poll, but still heartbeats).
        now = time.time_ns()
        updated = state.get("updatedNs") or 0
        last_ok = max(int(state.get("lastPollNs") or 0), int(state.get("lastHeartbeatNs") or 0))
        interval = max(settings.poll_interval_seconds, float(state.get("heartbeatIntervalSeconds") or 30))
        stale_after = 3 * interval + 60
        alive = (now - int(updated)) / 1e9 < 30
        talking = bool(last_ok) and (now - last_ok) / 1e9 < stale_after
        checks["polling"] = alive and talking
        if not alive:
            problems.append(f"the agent process (pid {running_pid}) has not updated its status for "
                            f"{_ago(updated)}: its loop may be stuck; see its log (journalctl -u dc-agent)")
        elif not talking:
            problems.append(f"the running agent has not reached the API for over {stale_after:.0f} s "
                            f"(last success: {_ago(last_ok or None)}; last error: {state.get('lastError') or 'none'})")

    # provisioner
    try:
        from provisioners.multi import describe

        items = describe(cfg.load_driver(settings))
        healthy = all(item["healthy"] for item in items)
        detail = items[0]["detail"] if len(items) == 1 else \
            ("all healthy" if healthy else "; ".join(f"{i['name']}: {i['detail']}" for i in items if not i["healthy"]))
        report["provisioner"].update({"healthy": healthy, "detail": detail, "checks": items[0]["checks"]
                                      if len(items) == 1 else {i["name"]: i["healthy"] for i in items}})
        report["provisioners"] = items
        checks["provisioner"] = healthy
        for item in items:
            if not item["healthy"]:
                problems.append(f"provisioner{'' if len(items) == 1 else ' ' + item['name']}: {item['detail']}")
    except provisioners.ConfigError as exc:
        checks["provisioner"] = False
        report["provisioner"].update({"healthy": False, "detail": str(exc)})
        problems.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a driver's health check must not crash status
        checks["provisioner"] = False
        report["provisioner"].update({"healthy": False, "detail": f"{type(exc).__name__}: {exc}"})
        problems.append(f"provisioner: {type(exc).__name__}: {exc}")

    # API: a signed heartbeat proves both reachability and that the signature is accepted
    if key is not None:
        report["api"] = asyncio.run(_probe_api(settings, key, len(report["agent"]["inProgress"])))
        checks["apiReachable"] = report["api"]["reachable"]
        checks["signatureAccepted"] = report["api"]["signatureAccepted"]
        if report["api"].get("error"):
            problems.append(report["api"]["error"])
    report["healthy"] = all(checks.values())
    from dc_common.redact import redact_value

    return redact_value(report)


async def _probe_api(settings: Any, key: Any, active: int) -> dict[str, Any]:
    from dc_agent.api import HeartbeatInfo, connect
    from dc_agent.errors import ApiError, ConfigFileError, Forbidden, ServerError, Unauthorized, Unreachable

    out: dict[str, Any] = {"url": settings.api_url, "dialect": settings.api_dialect, "reachable": False,
                           "signatureAccepted": False}
    try:
        client = connect(settings, key, timeout=min(10.0, settings.request_timeout_seconds))
    except ConfigFileError as exc:
        out["error"] = str(exc)
        return out
    started = time.monotonic()
    try:
        answer = await client.heartbeat(HeartbeatInfo(
            version=__version__, provisioner_type=settings.provisioner_type, active_contracts=active,
            max_concurrent=settings.max_concurrent, free_slots=max(0, settings.max_concurrent - active)),
            policy="status")
        out.update(reachable=True, signatureAccepted=True, poolName=answer.pool_name,
                   nextHeartbeatSeconds=answer.next_heartbeat_seconds)
    except Unreachable as exc:
        out["error"] = f"API not reachable at {settings.api_url}: {exc.detail}; check the network, DNS, firewall, TLS"
    except (Unauthorized, Forbidden) as exc:
        out["reachable"] = True
        out["error"] = (f"the API refused this agent's signature ({exc}); check the clock (NTP), and that the agent "
                        "was not revoked; re-register with `dc-agent setup --force --token NEW_TOKEN`")
    except ServerError as exc:
        out["reachable"] = True
        out["error"] = f"the API answered with a server error ({exc}); try again later"
    except ApiError as exc:
        out["reachable"] = True
        out["error"] = f"heartbeat refused: {exc}"
    finally:
        out["latencyMs"] = round((time.monotonic() - started) * 1000)
        await client.aclose()
    return out


def _table(report: dict[str, Any]) -> str:
    checks = report.get("checks", {})

    def mark(name: str) -> str:
        value = checks.get(name)
        return "ok  " if value else ("FAIL" if value is False else "-   ")

    agent = report.get("agent", {})
    cfg = report.get("config", {})
    prov = report.get("provisioner", {})
    api = report.get("api", {})
    in_progress = agent.get("inProgress") or {}
    counters = agent.get("counters") or {}
    rows = [
        (mark("config"), "config", report.get("configPath", "")),
        ("    ", "version", report.get("version", "")),
        ("    ", "provider", report.get("provider", "-")),
        ("    ", "pool", f"{(report.get('pool') or {}).get('name') or ''} ({(report.get('pool') or {}).get('id') or '-'})"),
        (mark("key"), "agent key", f"{cfg.get('private_key_path', '-')} -> {report.get('agentPubkey', '-')}"),
        (mark("apiReachable"), "API reachable", f"{api.get('url', cfg.get('api_url', '-'))}"
                                                 + (f" ({api.get('latencyMs')} ms)" if api.get("latencyMs") is not None else "")),
        ("    ", "API dialect", {"decent-cloud": "decent-cloud (live Decent Cloud API, Ed25519ph signatures)",
                              "pool-api": "pool-api (pool server, Ed25519 signatures)"}.get(
                                  str(cfg.get("api_dialect")), str(cfg.get("api_dialect", "-")))),
        (mark("signatureAccepted"), "signature accepted", "yes (signed heartbeat)" if api.get("signatureAccepted") else "no"),
        (mark("provisioner"), "provisioner", f"{prov.get('type', '-')}: {prov.get('detail', '')}"),
        *[("ok  " if item.get("healthy") else "FAIL", f"  {item['name']}",
           f"{item['type']}{' (default)' if item.get('default') else ''}: {item.get('detail', '')}")
          for item in report.get("provisioners") or [] if len(report.get("provisioners") or []) > 1],
        (mark("polling" if agent.get("running") else "agentRunning"), "agent process", (f"running (pid {agent.get('pid')})" if agent.get("running") else "not running")
         + (", draining" if agent.get("draining") else "")),
        ("    ", "last successful poll", _ago(agent.get("lastPollNs"))),
        ("    ", "in progress", ", ".join(f"{cid} ({v.get('phase')}, {v.get('seconds')} s)" for cid, v in in_progress.items())
         or "none"),
        ("    ", "outbox backlog", str(report.get("outboxBacklog", 0))),
        ("    ", "counters", ", ".join(f"{k}={v}" for k, v in counters.items() if v) or "none"),
    ]
    lines = [f"{m} {name:<22} {value}" for m, name, value in rows]
    lines.append("")
    lines.append("HEALTHY" if report.get("healthy") else "UNHEALTHY")
    for problem in report.get("problems", []):
        lines.append(f"  - {problem}")
    return "\n".join(lines)


def run_status(*, config: Path | None, as_json: bool, overrides: dict[str, Any]) -> int:
    report = collect(config, overrides)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_table(report))
    return 0 if report.get("healthy") else 1
