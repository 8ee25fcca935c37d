#!/usr/bin/env python3
"""An example script written for the Rust dc-agent 0.6's script provisioner (used by the tests).

dc-agent runs such scripts with `[provisioner.script] protocol = "rust"` (what `dc-agent import-config`
selects for an imported Rust `[provisioner.script]` section). One script may serve every action, as here;
the action comes in the JSON on stdin, and the reply is one JSON object on stdout:

    {"action": "provision", "contract_id", "offering_id", "cpu_cores", "memory_mb", "storage_gb",
     "requester_ssh_pubkey", "instance_config", "post_provision_script", "external_id": null}
        -> {"success": true, "instance": {"external_id", "ip_address", "ipv6_address", "ssh_port",
                                          "root_password", "additional_details", ...}}
    {"action": "terminate", "external_id"}     -> {"success": true}
    {"action": "health_check", "external_id"}  -> {"success": true, "health": {"status": "healthy",
                                                   "uptime_seconds": N}} (or "unhealthy" + "reason")
    {"action": "get_instance", "external_id"}  -> {"success": true, "instance": {...} | null}
    any failure                                -> {"success": false, "error": "...", "retry_possible": bool}

It makes no real machine: an instance is a JSON file in --dir with an address from 192.0.2.0/24.
`--mode` makes it misbehave for tests: `fail` (success false), `bad-json` (prose on stdout), `hang`
(starts a child and sleeps), `exit` (exit status 4 with a message on stderr). Every call appends its
action to `<dir>/calls.log` and writes its stdin to `<dir>/last-input.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def reply(**fields: object) -> int:
    print(json.dumps(fields))
    return 0


def instance_path(directory: Path, external_id: str) -> Path:
    return directory / f"{hashlib.sha256(external_id.encode()).hexdigest()[:16]}.instance"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--mode", choices=["ok", "fail", "bad-json", "hang", "exit"], default="ok")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    raw = sys.stdin.read()
    (args.dir / "last-input.json").write_text(raw)
    request = json.loads(raw)
    action = request["action"]
    with open(args.dir / "calls.log", "a") as log:
        log.write(action + "\n")

    if args.mode == "hang":
        child = subprocess.Popen(["sleep", "300"])
        (args.dir / "pids").write_text(f"{child.pid} {os.getpid()}\n")
        time.sleep(300)
    if args.mode == "exit":
        print("qm clone failed: storage 'local-lvm' is full", file=sys.stderr)
        return 4
    if args.mode == "bad-json":
        print(f"{action}: done, VM 123 is up")
        return 0
    if args.mode == "fail":
        return reply(success=False, error=f"{action} failed: no capacity left on node pve1", retry_possible=False)

    if action == "provision":
        cid = str(request["contract_id"])
        external_id = f"rust-{cid}"
        digest = hashlib.sha256(cid.encode()).digest()
        instance = {"external_id": external_id, "ip_address": f"192.0.2.{1 + digest[0] % 254}",
                    "ipv6_address": None, "ssh_port": 2222, "root_password": None,
                    "public_ip": "203.0.113.10", "additional_details": {"cores": request.get("cpu_cores")}}
        instance_path(args.dir, external_id).write_text(json.dumps(instance))
        return reply(success=True, instance=instance)
    path = instance_path(args.dir, str(request["external_id"]))
    if action == "terminate":
        path.unlink(missing_ok=True)
        return reply(success=True)
    if action == "health_check":
        if path.exists():
            return reply(success=True, health={"status": "healthy", "uptime_seconds": 42})
        return reply(success=True, health={"status": "unhealthy", "reason": "no such VM"})
    if action == "get_instance":
        return reply(success=True, instance=json.loads(path.read_text()) if path.exists() else None)
    return reply(success=False, error=f"unknown action {action!r}", retry_possible=False)


if __name__ == "__main__":
    sys.exit(main())
