#!/usr/bin/env python3
"""An example provisioning script for dc-agent's `script` driver (used by the demo and the tests).

It makes no real machine: an "instance" is a JSON file in --dir, with an address from the
documentation range 192.0.2.0/24 (never contacted). Replace the body of `provision` with your own
(clone a VM, call your cloud's API, ...); keep the interface:

    provision   contract JSON on stdin  -> instance details JSON on stdout (exit 0), or exit non-zero
    find        {"contractId"} on stdin -> the instance made for it, or null
    list        nothing on stdin        -> [{"externalId", "contractId"}, ...]
    terminate   {"externalId"} on stdin -> exit 0 once it is gone
    health      {"externalId"} on stdin -> {"status": "healthy"|"unhealthy"|"unknown", "detail": "..."}
    stop, start {"externalId"} on stdin -> exit 0 once stopped / running (the record's "state")
    reset_password  {"externalId", "username", "password"} on stdin -> exit 0 (only a SHA-256 is kept)
    rotate_ssh_key  {"externalId", "newKey", "oldKey"} on stdin     -> exit 0 (the record's "sshKeys")

Configure it in the agent's config (paths absolute, or relative to the config file):

    [provisioner.script]
    command           = ["python3", "/path/to/script-provisioner.py", "provision", "--dir", "/srv/demo-vms"]
    find_command      = ["python3", "/path/to/script-provisioner.py", "find", "--dir", "/srv/demo-vms"]
    list_command      = ["python3", "/path/to/script-provisioner.py", "list", "--dir", "/srv/demo-vms"]
    terminate_command = ["python3", "/path/to/script-provisioner.py", "terminate", "--dir", "/srv/demo-vms"]
    health_command    = ["python3", "/path/to/script-provisioner.py", "health", "--dir", "/srv/demo-vms"]
    # likewise stop_command, start_command, reset_password_command, rotate_ssh_key_command

An instance that was never stopped has no "state" (it counts as running) and no "sshKeys" until the
first rotation: the provision record stays exactly as it was before these commands existed.
Options: --delay SECONDS (simulated work, default 1), --log FILE (one line per call, appended with a
single O_APPEND write under flock, so several agents can share it), --fail-every N (fail the N-th,
2N-th, ... provision of this directory, for trying failure handling). `AGENT_NAME` from the
environment (set it with `env = { AGENT_NAME = "hv-1" }`) is written to the log and the details.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def record(log: str | None, *fields: str) -> None:
    if not log:
        return
    line = "\t".join([str(time.time_ns()), *fields, os.environ.get("AGENT_NAME", "-"), str(os.getpid())]) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def instance_path(directory: Path, contract_id: str) -> Path:
    return directory / f"{hashlib.sha256(contract_id.encode()).hexdigest()[:16]}.json"


def provision(args: argparse.Namespace) -> int:
    contract = json.load(sys.stdin)
    cid = str(contract["contractId"])
    record(args.log, "provision", "start", cid)
    time.sleep(args.delay)  # the "work": cloning, booting, waiting for the guest agent ...
    if args.fail_every:
        counter = args.dir / ".provisions"
        with open(counter, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            n = len(fh.read()) + 1
            fh.write(".")
        if n % args.fail_every == 0:
            record(args.log, "provision", "fail", cid)
            print(f"example failure #{n}: no capacity left on this (pretend) node", file=sys.stderr)
            return 3
    digest = hashlib.sha256(cid.encode()).digest()
    node = os.environ.get("AGENT_NAME") or os.uname().nodename
    details = {
        # unique per instance, not per contract: reconcile tells a contract's recorded instance from a
        # second one by this id, so two hypervisors must never report the same id for different machines
        "externalId": f"demo-{cid}@{node}",
        "ipAddress": f"192.0.2.{1 + digest[0] % 254}",
        "ipv6Address": f"2001:db8::{digest[1]:x}{digest[2]:02x}",
        "sshPort": 22,
        "provisioner": "script",
        "node": node,
        "extra": {"cpuCores": contract.get("cpuCores"), "memoryMb": contract.get("memoryMb")},
    }
    path = instance_path(args.dir, cid)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"contractId": cid, "details": details}))
    os.replace(tmp, path)
    record(args.log, "provision", "done", cid)
    print(json.dumps(details))
    return 0


def find(args: argparse.Namespace) -> int:
    cid = str(json.load(sys.stdin)["contractId"])
    path = instance_path(args.dir, cid)
    print(json.dumps(json.loads(path.read_text())["details"]) if path.exists() else "null")
    return 0


def list_instances(args: argparse.Namespace) -> int:
    out = []
    for path in sorted(args.dir.glob("*.json")):
        data = json.loads(path.read_text())
        out.append({"externalId": data["details"]["externalId"], "contractId": data["contractId"]})
    print(json.dumps(out))
    return 0


def terminate(args: argparse.Namespace) -> int:
    external_id = str(json.load(sys.stdin)["externalId"])
    for path in args.dir.glob("*.json"):
        data = json.loads(path.read_text())
        if data["details"]["externalId"] == external_id:
            path.unlink(missing_ok=True)
            record(args.log, "terminate", "done", data["contractId"])
    return 0


def instance_record(directory: Path, external_id: str) -> tuple[Path, dict] | None:
    """The record file and data of the instance named `external_id`, or None."""
    for path in directory.glob("*.json"):
        data = json.loads(path.read_text())
        if data["details"]["externalId"] == external_id:
            return path, data
    return None


def update_record(path: Path, data: dict) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def health(args: argparse.Namespace) -> int:
    found = instance_record(args.dir, str(json.load(sys.stdin)["externalId"]))
    if found is None:
        print(json.dumps({"status": "unhealthy", "detail": "no such instance"}))
    elif found[1].get("state", "running") == "running":
        print(json.dumps({"status": "healthy", "detail": "running"}))
    else:
        print(json.dumps({"status": "unhealthy", "detail": found[1]["state"]}))
    return 0


def change(args: argparse.Namespace) -> int:
    """stop, start, reset_password, rotate_ssh_key: change the instance's record; exit 1 if it is unknown."""
    request = json.load(sys.stdin)
    found = instance_record(args.dir, str(request["externalId"]))
    if found is None:
        print(f"no instance {request['externalId']!r}", file=sys.stderr)
        return 1
    path, data = found
    if args.action in ("stop", "start"):
        data["state"] = "stopped" if args.action == "stop" else "running"
    elif args.action == "reset_password":  # keep a hash to show it arrived, never the password itself
        data["passwords"] = {**data.get("passwords", {}), str(request.get("username") or "root"):
                             hashlib.sha256(str(request["password"]).encode()).hexdigest()}
    else:
        keys = [k for k in data.get("sshKeys", []) if k not in (request.get("oldKey"), request["newKey"])]
        data["sshKeys"] = [*keys, request["newKey"]]
    update_record(path, data)
    record(args.log, args.action, "done", data["contractId"])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["provision", "find", "list", "terminate", "health", "stop", "start",
                                           "reset_password", "rotate_ssh_key"])
    parser.add_argument("--dir", type=Path, required=True, help="where the pretend instances live")
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--log", default=None)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    actions = {"provision": provision, "find": find, "list": list_instances, "terminate": terminate, "health": health}
    return actions.get(args.action, change)(args)


if __name__ == "__main__":
    sys.exit(main())
