#!/usr/bin/env python3
"""The README's demo: pool_api on a temporary SQLite file, two agents with the script provisioner,
a few contracts, and a table of how each one was provisioned. Everything it starts, it stops; every
file it makes lives in one temporary directory (kept with --keep).

Run through `bash scripts/demo.sh` (which makes .venv and installs the project first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx
import tomli_w
from nacl.signing import SigningKey

from dc_agent.signing import Ed25519Auth

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE_SCRIPT = REPO / "examples" / "script-provisioner.py"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if res.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(argv[:3])} …` failed ({res.returncode}):\n{res.stderr.strip()}")
    return res


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def data(response: httpx.Response):
    body = response.json()
    if response.status_code >= 400 or not body.get("success"):
        raise SystemExit(f"demo: {response.request.method} {response.request.url.path} -> "
                         f"{response.status_code}: {body.get('error')}")
    return body["data"]


def main() -> int:
    parser = argparse.ArgumentParser(description="dc-agent demo")
    parser.add_argument("--contracts", type=int, default=6)
    parser.add_argument("--delay", type=float, default=1.5, help="seconds the example script 'works' per contract")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dc-agent-demo-"))
    db_url = f"sqlite:///{work / 'pool.db'}"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    code = 1
    try:
        say(f"Starting pool_api on {api_url} (SQLite file {work / 'pool.db'})")
        server_log = open(work / "pool-api.log", "wb")  # noqa: SIM115
        server = subprocess.Popen([str(BIN / "dc-pool-api"), "serve", "--host", "127.0.0.1", "--port", str(port),
                                   "--database-url", db_url, "--heartbeat-seconds", "5"],
                                  stdout=server_log, stderr=subprocess.STDOUT, cwd=work)
        procs.append(("pool_api", server))

        def healthy() -> bool:
            if server.poll() is not None:
                raise SystemExit("demo: pool_api exited:\n" + (work / "pool-api.log").read_text()[-2000:])
            try:
                return httpx.get(f"{api_url}/api/v1/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "pool_api to answer /api/v1/health", 0.2)

        say("Registering a provider, a pool (europe, script), an offering and two setup tokens")
        provider_key = SigningKey.generate()
        provider_pk = provider_key.verify_key.encode().hex()
        run([str(BIN / "dc-pool-api"), "provider", "add", "--pubkey", provider_pk, "--name", "demo-provider",
             "--database-url", db_url])
        api = httpx.Client(base_url=f"{api_url}/api/v1/providers/{provider_pk}",
                           auth=Ed25519Auth(provider_key, role="provider"), timeout=30)
        pool = data(api.post("/pools", json={"name": "demo-eu", "location": "europe", "provisionerType": "script"}))
        data(api.post("/offerings", json={"offeringId": "vps-demo", "name": "VPS demo", "datacenterCountry": "DE",
                                          "provisionerType": "script", "agentPoolId": pool["poolId"],
                                          "cpuCores": 2, "memoryMb": 2048, "storageGb": 20}))
        tokens = [data(api.post(f"/pools/{pool['poolId']}/setup-tokens", json={"label": f"hv-{i}"}))
                  for i in (1, 2)]
        print(f"    pool {pool['poolId']}; tokens {', '.join(t['token'][:14] + '…' for t in tokens)}")

        agents = []
        for i, token in enumerate(tokens, start=1):
            name = f"hv-{i}"
            config = work / name / "config.toml"
            say(f"dc-agent setup --token {token['token'][:14]}… --api-url {api_url} --config {config} --label {name}")
            out = run([str(BIN / "dc-agent"), "setup", "--token", token["token"], "--api-url", api_url,
                       "--config", str(config), "--label", name]).stdout
            print("    " + out.strip().replace("\n", "\n    "))
            doc = tomllib.loads(config.read_text())
            doc["agent"]["poll_interval_seconds"] = 1

            def argv(action: str, *extra: str) -> list[str]:
                return [sys.executable, str(EXAMPLE_SCRIPT), action, "--dir", str(work / "instances"),
                        "--log", str(work / "script-calls.log"), *extra]

            doc["provisioner"]["script"] = {
                "command": argv("provision", "--delay", str(args.delay)), "find_command": argv("find"),
                "list_command": argv("list"), "terminate_command": argv("terminate"),
                "timeout_seconds": 120, "env": {"AGENT_NAME": name},
            }
            config.write_text(tomli_w.dumps(doc))
            os.chmod(config, 0o600)
            agents.append((name, config))
        print(f"    configured [provisioner.script] with {EXAMPLE_SCRIPT.relative_to(REPO)} in both configs")

        say("Starting two `dc-agent run` processes")
        pubkeys = {}
        for name, config in agents:
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen([str(BIN / "dc-agent"), "run", "--config", str(config), "--log-format", "json"],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=work)
            procs.append((name, proc))
            key = SigningKey(bytes.fromhex((config.parent / "agent.key").read_text().strip()))
            pubkeys[key.verify_key.encode().hex()] = name

        say(f"Creating {args.contracts} paid contracts for offering vps-demo")
        created = time.time_ns()
        ids = run([str(BIN / "dc-pool-api"), "contract", "create", "--offering", "vps-demo", "--count",
                   str(args.contracts), "--ssh-pubkey", "ssh-ed25519 AAAAC3demo tenant@example",
                   "--database-url", db_url]).stdout.split()

        def contracts() -> list[dict]:
            rows = json.loads(run([str(BIN / "dc-pool-api"), "contract", "list", "--json",
                                   "--database-url", db_url]).stdout)
            return [r for r in rows if r["contractId"] in ids]

        def all_provisioned():
            for name, proc in procs:
                if proc.poll() is not None:
                    raise SystemExit(f"demo: {name} exited with {proc.returncode}; see {work / (name + '.log')}")
            rows = contracts()
            done = sum(r["status"] == "provisioned" for r in rows)
            print(f"    {done}/{len(ids)} provisioned", flush=True)
            return rows if done == len(ids) else None

        rows = wait_for(all_provisioned, 180, "the contracts to be provisioned", 1.0)

        say("How each contract was provisioned")
        header = f"{'CONTRACT':<34} {'AGENT':<6} {'INSTANCE':<50} {'IPV4':<13} {'SSH':>4} {'AFTER':>6}"
        print(header)
        print("-" * len(header))
        for r in sorted(rows, key=lambda r: r["provisionedAtNs"]):
            d = r["instanceDetails"] or {}
            after = (r["provisionedAtNs"] - created) / 1e9
            print(f"{r['contractId']:<34} {pubkeys.get(r['provisionedBy'], '?'):<6} {d.get('externalId', ''):<50} "
                  f"{d.get('ipAddress', ''):<13} {d.get('sshPort', ''):>4} {after:>5.1f}s")
        calls = [line.split("\t") for line in (work / "script-calls.log").read_text().splitlines()]
        runs = [c[3] for c in calls if c[1:3] == ["provision", "done"]]
        twice = sorted({cid for cid in runs if runs.count(cid) > 1})
        print(f"\n{len(rows)} contracts, {len(runs)} finished script runs, "
              f"{len({r['provisionedBy'] for r in rows})} agents took part; "
              + ("each contract provisioned exactly once." if not twice and len(runs) == len(rows)
                 else f"provisioned more than once: {', '.join(twice) or '-'}"))
        code = 0 if not twice else 1

        say(f"dc-agent status --config {agents[0][1]}")
        status = subprocess.run([str(BIN / "dc-agent"), "status", "--config", str(agents[0][1])],
                                capture_output=True, text=True)
        print("    " + status.stdout.strip().replace("\n", "\n    "))
    finally:
        say("Stopping the agents (SIGTERM: they drain, then exit) and pool_api")
        for name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(procs):
            try:
                rc = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            clean = rc == 0 or (name == "pool_api" and rc == -signal.SIGTERM)  # uvicorn re-raises SIGTERM
            print(f"    {name} stopped" + ("" if clean else f" (exit status {rc})"))
        if args.keep or code != 0:
            print(f"\nLogs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
