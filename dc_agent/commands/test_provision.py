"""`dc-agent test-provision`: one real provision -> health -> terminate round trip on a configured driver, with a
made-up contract, never touching the server (no API client is made at all).

Each step is printed with its time. On a failure, Ctrl-C or SIGTERM the driver is told to stop (the cancel
event: it removes what it made), then whatever instance exists is terminated; a second signal leaves at once.
The driver's state goes to `<state_dir>/test-provision/<name>`, apart from a running agent's.
"""

from __future__ import annotations

import base64
import re
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dc_agent.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail

SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/]+=*( .*)?$")
POLL_SECONDS = 2.0


class StepFailed(Exception):
    """A step failed; the message says why (already printed)."""


def throwaway_key() -> str:
    """An OpenSSH ed25519 public key line whose private half is never kept: nobody can log in with it."""
    from nacl.signing import SigningKey

    def blob(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    public = bytes(SigningKey.generate().verify_key)
    return "ssh-ed25519 " + base64.b64encode(blob(b"ssh-ed25519") + blob(public)).decode() + " dc-agent-test-provision"


def read_key(path: Path) -> str:
    """The public key line in `path` (or in `path`.pub when `path` is a private key). ValueError says why not."""
    try:
        text = path.read_text().strip()
        if text.startswith("-----BEGIN") and path.with_name(path.name + ".pub").exists():
            text = path.with_name(path.name + ".pub").read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--ssh-key {path}: cannot read it ({exc})") from None
    line = text.splitlines()[0].strip() if text else ""
    if not SSH_KEY.match(line):
        raise ValueError(f"--ssh-key {path}: not an OpenSSH public key line (like `ssh-ed25519 AAAA… you@host`); "
                         "pass the .pub file")
    return line


class Run:
    """The steps of one round trip, their printing, and the cancel event a signal sets."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.started = time.monotonic()
        self.cancel = threading.Event()
        self.signals = 0

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            self.out(f"  {signal.Signals(signum).name}: stopping; the driver removes what it made "
                     "(signal again to leave at once, leaving it behind)")
            self.cancel.set()
        else:
            raise KeyboardInterrupt

    def step(self, name: str, work: Callable[[], Any], describe: Callable[[Any], str] = lambda _r: "") -> Any:
        """Run `work` in a worker thread (so that signals reach this one), print the line, return its result."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = work()
            except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
                box["error"] = exc

        begun = time.monotonic()
        worker = threading.Thread(target=target, name=f"test-provision-{name}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
        seconds = time.monotonic() - begun
        if "error" in box:
            self.line(name, "FAIL", seconds, describe_error(box["error"]))
            raise StepFailed(describe_error(box["error"])) from box["error"]
        self.line(name, "ok", seconds, describe(box.get("result")))
        return box.get("result")

    def line(self, name: str, mark: str, seconds: float | None, detail: str) -> None:
        at = time.monotonic() - self.started
        took = f"{seconds:6.1f} s" if seconds is not None else " " * 8
        self.out(f"[{at:6.1f} s] {name:<10} {mark:<4} {took}  {detail}".rstrip())


def describe_error(exc: BaseException) -> str:
    from provisioners.base import ProvisionError

    if isinstance(exc, ProvisionError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _details_line(details: Any) -> str:
    where = f"{details.ip_address or details.ipv6_address or 'no address'}:{details.ssh_port}"
    secret = "; a root password was set (not shown)" if details.root_password else ""
    return f"instance {details.external_id} at {where}{secret}"


def _wait_healthy(run: Run, driver: Any, external_id: str, timeout: float) -> Any:
    """check_instance until healthy, the deadline or a cancel; the last answer (StepFailed unless healthy)."""
    deadline = time.monotonic() + timeout
    while True:
        health = driver.check_instance(external_id)
        if health.status == "healthy":
            return health
        if time.monotonic() >= deadline or run.cancel.is_set():
            why = "cancelled" if run.cancel.is_set() else f"not healthy after {timeout:.0f} s"
            raise RuntimeError(f"{why}: {health.status}" + (f" ({health.detail})" if health.detail else ""))
        run.cancel.wait(max(0.1, min(POLL_SECONDS, deadline - time.monotonic())))


def _load(config: Path | None, name: str | None) -> tuple[Any, Any, Any]:
    """(settings, table, driver) for the chosen provisioner; raises ConfigFileError / ConfigError / LookupError."""
    from dc_agent import config as cfg
    from provisioners import ConfigError, load
    from provisioners.multi import pick, renamed_error

    settings = cfg.load(config)
    tables = cfg.provisioner_tables(settings)
    table = pick(tables, name)
    if table is None:
        raise LookupError(f"no provisioner named {name!r} in {settings.config_path}; configured: "
                          + ", ".join(f"{t.name} ({t.type})" for t in tables))
    if table.type == "manual":
        raise PermissionError(f"provisioner {table.name} is the manual driver: an operator makes its machines by "
                              "hand, so there is nothing to test automatically; test your own procedure instead")
    own = dict(table.settings)
    own["state_dir"] = str(settings.state_dir / "test-provision" / table.name)
    try:
        driver = load(table.type, own, config_path=settings.config_path)
    except ConfigError as exc:
        raise ConfigError(renamed_error(str(exc), table)) from None
    return settings, table, driver


def run_test_provision(*, config: Path | None, provisioner: str | None, keep: bool, ssh_key: Path | None,
                       health_timeout: float, remove: str | None) -> int:
    from dc_agent.errors import ConfigFileError
    from provisioners import ConfigError, Contract, capabilities

    try:
        settings, table, driver = _load(config, provisioner)
        key = read_key(ssh_key) if ssh_key else None
    except (ConfigFileError, ConfigError) as exc:
        fail("test-provision", str(exc))
        return EXIT_CONFIG
    except (LookupError, PermissionError, ValueError) as exc:
        fail("test-provision", str(exc))
        return EXIT_FAILURE
    run = Run()
    previous = {sig: signal.signal(sig, run.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if remove:
            return _remove(run, driver, table, remove)
        contract = Contract(contract_id=f"test-{secrets.token_hex(4)}", offering_id="test-provision",
                            requester_ssh_pubkey=key or throwaway_key(), cpu_cores=1, memory_mb=1024, storage_gb=10,
                            provisioner_type=table.type)
        run.out(f"test-provision: provisioner {table.name} ({table.type}), contract {contract.contract_id} "
                "(1 core, 1024 MB, 10 GB), " + (f"SSH key from {ssh_key}" if key else
                                                "a throwaway SSH key (nobody can log in)") + "; no server is contacted")
        hint = f"dc-agent test-provision --provisioner {table.name} --config {settings.config_path} --remove"
        return _round_trip(run, driver, contract, keep=keep, health_timeout=health_timeout,
                           has_health="health" in capabilities(driver), remove_hint=hint, kind=table.type)
    except KeyboardInterrupt:
        run.out("interrupted again: leaving now; what was made may be left behind (see above)")
        return EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _round_trip(run: Run, driver: Any, contract: Any, *, keep: bool, health_timeout: float, has_health: bool,
                remove_hint: str, kind: str) -> int:
    details = None
    try:
        health = run.step("health", driver.health, lambda h: h.detail)
        if not health.ok:
            run.line("health", "FAIL", None, "the provisioner is not healthy: fix what it says first")
            return EXIT_FAILURE
        details = run.step("provision", lambda: driver.provision(contract, run.cancel), _details_line)
        if run.cancel.is_set():
            raise StepFailed("cancelled")
        if has_health:
            run.step("check", lambda: _wait_healthy(run, driver, details.external_id, health_timeout),
                     lambda h: f"{h.status}" + (f": {h.detail}" if h.detail else ""))
        else:
            run.line("check", "skip", None, f"the {kind} driver has no instance health check")
        if keep:
            run.out(f"PASSED; kept instance {details.external_id} (a running agent's reconcile lists it as unknown "
                    f"and leaves it). Remove it with:\n  {remove_hint} {details.external_id}")
            return EXIT_OK
        _terminate(run, driver, details.external_id)
        run.out(f"PASSED in {time.monotonic() - run.started:.1f} s")
        return EXIT_OK
    except StepFailed:
        _clean_up(run, driver, contract, details)
        run.out("FAILED" + (" (interrupted)" if run.cancel.is_set() else ""))
        return EXIT_FAILURE


def _terminate(run: Run, driver: Any, external_id: str) -> None:
    run.step("terminate", lambda: driver.terminate(external_id), lambda _r: f"instance {external_id} removed")

    def listed() -> bool:
        return any(i.external_id == external_id for i in driver.list_instances())

    if run.step("verify", listed, lambda left: "still listed!" if left else "not in the driver's list"):
        raise StepFailed(f"instance {external_id} is still listed after terminate")


def _clean_up(run: Run, driver: Any, contract: Any, details: Any) -> None:
    """After a failure or a cancel: terminate the instance made (or one find() still sees for the contract)."""
    try:
        if details is None:
            details = run.step("find", lambda: driver.find(contract.contract_id),
                               lambda d: "nothing left" if d is None else f"found {d.external_id}")
        if details is not None:
            _terminate(run, driver, details.external_id)
    except StepFailed as exc:
        run.out(f"could not clean up ({exc}); remove what is left by hand"
                + (f": instance {details.external_id}" if details is not None else ""))


def _remove(run: Run, driver: Any, table: Any, external_id: str) -> int:
    run.out(f"test-provision: removing instance {external_id} with provisioner {table.name} ({table.type})")
    try:
        _terminate(run, driver, external_id)
    except StepFailed:
        return EXIT_FAILURE
    return EXIT_OK
