"""`dc-agent manual list|done|fail`: the operator's side of the manual driver's hand-off directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dc_agent.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail


def _handoff(config: Path | None, command: str) -> Any:
    from dc_agent import config as cfg
    from dc_agent.errors import ConfigFileError
    from provisioners.manual import HandoffDir

    try:
        settings = cfg.load(config)
    except ConfigFileError as exc:
        fail(f"manual {command}", str(exc))
        return None
    manual = [t for t in cfg.provisioner_tables(settings) if t.type == "manual"]
    if not manual:
        fail(f"manual {command}", f"{settings.config_path}: [provisioner] type is {settings.provisioner_type!r}, "
                                  "not \"manual\" (nor has any [provisioners.<name>] type = \"manual\"); manual "
                                  "commands only apply to the manual provisioner")
        return None
    return HandoffDir(Path(manual[0].settings["state_dir"]))


def run_list(*, config: Path | None, as_json: bool) -> int:
    handoff = _handoff(config, "list")
    if handoff is None:
        return EXIT_CONFIG
    waiting = handoff.waiting()
    removals = handoff.termination_requests()
    if as_json:
        print(json.dumps({"waiting": waiting, "terminate": removals}, indent=2, sort_keys=True))
        return EXIT_OK
    if not waiting:
        print("No contract is waiting for an operator.")
    else:
        print(f"{'CONTRACT':<28} {'WAITING':>8}  {'CPU':>4} {'MEM MB':>7} {'DISK GB':>7}  SSH KEY")
        for item in waiting:
            c = item.get("contract", {})
            minutes = (time.time_ns() - int(item.get("sinceNs", 0))) / 6e10
            key = (c.get("requesterSshPubkey") or "")[:40]
            print(f"{item['contractId']:<28} {minutes:>6.0f} m  {c.get('cpuCores') or '-':>4} "
                  f"{c.get('memoryMb') or '-':>7} {c.get('storageGb') or '-':>7}  {key}")
        print("\nHand in:  dc-agent manual done CONTRACT --ip ADDRESS [--ssh-port N]")
        print("Give up:  dc-agent manual fail CONTRACT --reason TEXT")
    for item in removals:
        print(f"Please remove machine {item.get('externalId')} (contract {item.get('contractId')}): it was cancelled.")
    return EXIT_OK


def _hand(config: Path | None, command: str, contract: str, result: dict[str, Any]) -> int:
    handoff = _handoff(config, command)
    if handoff is None:
        return EXIT_CONFIG
    waiting = handoff.is_waiting(contract)
    try:
        handoff.hand_result(contract, result)
    except OSError as exc:
        fail(f"manual {command}", f"cannot write to {handoff.results}: {exc.strerror or exc}; "
                                  "run as the agent's user (root for /var/lib/dc-agent)")
        return EXIT_FAILURE
    if waiting:
        print(f"Handed {contract} to the running agent; it reports it within a few seconds "
              "(see `dc-agent status`).")
    else:
        print(f"Note: no running agent is waiting for {contract} right now; the result is kept and used "
              "when the agent next takes this contract.")
    return EXIT_OK


def run_done(*, config: Path | None, contract: str, ip: str, ssh_port: int, ipv6: str | None,
             external_id: str | None, root_password: str | None) -> int:
    import ipaddress

    try:
        ipaddress.ip_address(ip)
        if ipv6:
            ipaddress.IPv6Address(ipv6)
    except ValueError as exc:
        fail("manual done", f"{exc}; pass --ip as an IPv4 address and --ipv6 as an IPv6 address")
        return EXIT_FAILURE
    if not 1 <= ssh_port <= 65535:
        fail("manual done", f"--ssh-port {ssh_port} is not a port number (1-65535)")
        return EXIT_FAILURE
    details: dict[str, Any] = {"externalId": external_id or f"manual-{contract}", "ipAddress": ip,
                               "ipv6Address": ipv6, "sshPort": ssh_port, "provisioner": "manual", "extra": {}}
    if root_password:
        details["rootPassword"] = root_password
    return _hand(config, "done", contract, {"outcome": "done", "instanceDetails": details})


def run_fail(*, config: Path | None, contract: str, reason: str) -> int:
    if not reason.strip():
        fail("manual fail", "--reason is empty; say why, the provider sees it")
        return EXIT_FAILURE
    return _hand(config, "fail", contract, {"outcome": "fail", "reason": reason.strip()})
