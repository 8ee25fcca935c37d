"""systemd/dc-agent.service: its exposure score, that systemd parses it (and the drop-in example), that
its timeouts fit the agent's, and that Python and the agent's libraries run under its
MemoryDenyWriteExecute=yes."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "dc-agent.service"
DROPIN_EXAMPLE = REPO / "systemd" / "script-provisioner.conf.example"
INSTALLER = REPO / "systemd" / "install.sh"
MAX_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package `systemd`); the unit's exposure score is not measured",
)


def service_settings(text: str) -> dict[str, list[str]]:
    """The [Service] assignments of a unit, each key with all its values in order (systemd allows a
    key several times)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exposure(unit_args: list[str], cwd: Path | None = None) -> float:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", *unit_args],
                         capture_output=True, text=True, cwd=cwd, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert match, f"no score in systemd-analyze output (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
    return float(match.group(1))


def verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_path)],
                          capture_output=True, text=True, timeout=60)


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at /bin/true, since `verify` checks that the binary exists."""
    text = UNIT.read_text().replace("ExecStart=/opt/dc-agent/venv/bin/dc-agent", "ExecStart=/bin/true")
    path = tmp_path / "dc-agent.service"
    path.write_text(text)
    return path


def uncommented_example() -> str:
    """The drop-in example with every commented-out setting turned on (the most relaxed case)."""
    return re.sub(r"(?m)^#([A-Z][A-Za-z]*=)", r"\1", DROPIN_EXAMPLE.read_text())


class TestExposure:
    @needs_analyze
    def test_score_is_at_most_3(self):
        """`systemd-analyze security --offline=true` rates the unit 3.0 or lower."""
        score = exposure([str(UNIT)])
        assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}: the unit lost hardening"

    @needs_analyze
    def test_drop_in_example_as_shipped_keeps_the_score(self, tmp_path):
        """The example drop-in, installed as shipped (all commented out), changes nothing."""
        unit_dir = tmp_path / "etc" / "systemd" / "system"
        (unit_dir / "dc-agent.service.d").mkdir(parents=True)
        shutil.copy(UNIT, unit_dir / "dc-agent.service")
        shutil.copy(DROPIN_EXAMPLE, unit_dir / "dc-agent.service.d" / "script-provisioner.conf")
        assert exposure([f"--root={tmp_path}", "dc-agent.service"]) == exposure([str(UNIT)])

    @needs_analyze
    def test_fully_relaxed_drop_in_is_read(self, tmp_path):
        """Every relaxation in the example turned on is read by systemd and raises the score (so the
        lines are real settings, not typos that systemd would ignore)."""
        unit_dir = tmp_path / "etc" / "systemd" / "system"
        (unit_dir / "dc-agent.service.d").mkdir(parents=True)
        shutil.copy(UNIT, unit_dir / "dc-agent.service")
        (unit_dir / "dc-agent.service.d" / "script-provisioner.conf").write_text(uncommented_example())
        assert exposure([f"--root={tmp_path}", "dc-agent.service"]) > exposure([str(UNIT)])


class TestParsing:
    @needs_analyze
    def test_unit_verifies_without_warnings(self, tmp_path):
        """`systemd-analyze verify` accepts every line of the unit (unknown keys would be warnings)."""
        res = verify(runnable_copy(tmp_path))
        assert res.returncode == 0 and not res.stderr.strip(), res.stderr

    @needs_analyze
    def test_drop_in_example_verifies_without_warnings(self, tmp_path):
        """Every setting in the drop-in example, uncommented, is one systemd knows."""
        unit = runnable_copy(tmp_path)
        dropins = tmp_path / "dc-agent.service.d"
        dropins.mkdir()
        (dropins / "script-provisioner.conf").write_text(uncommented_example())
        res = verify(unit)
        assert res.returncode == 0 and not res.stderr.strip(), res.stderr

    def test_installer_embeds_this_unit(self):
        """install.sh (run through curl, with no second download) writes exactly systemd/dc-agent.service."""
        text = INSTALLER.read_text()
        embedded = text.split("cat <<'UNIT'\n", 1)[1].split("\nUNIT\n", 1)[0] + "\n"
        assert embedded == UNIT.read_text(), "systemd/install.sh's copy of the unit differs from systemd/dc-agent.service"


class TestSettings:
    def test_notify_watchdog_and_restart(self):
        """Type=notify with a watchdog that only the main process may feed; restarts on failure."""
        s = service_settings(UNIT.read_text())
        assert s["Type"] == ["notify"]
        assert s["NotifyAccess"] == ["main"]
        assert int(s["WatchdogSec"][0]) >= 30
        assert s["Restart"] == ["on-failure"]
        assert s["ExecStart"] == ["/opt/dc-agent/venv/bin/dc-agent run --config /etc/dc-agent/config.toml"]

    def test_stop_timeout_exceeds_the_drain(self):
        """TimeoutStopSec leaves the agent its shutdown_grace_seconds plus a margin for clean-up, and
        SIGTERM goes to the agent alone (KillMode=mixed), which stops its own children."""
        from dc_agent.config import AGENT_OPTIONS

        grace = AGENT_OPTIONS["shutdown_grace_seconds"][1]
        s = service_settings(UNIT.read_text())
        assert float(s["TimeoutStopSec"][0]) >= grace + 20
        assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]

    def test_private_directories(self):
        """Config and state directories are created 0700 and files 0600 (UMask=0077)."""
        s = service_settings(UNIT.read_text())
        assert s["ConfigurationDirectory"] == ["dc-agent"] and s["ConfigurationDirectoryMode"] == ["0700"]
        assert s["StateDirectory"] == ["dc-agent"] and s["StateDirectoryMode"] == ["0700"]
        assert s["UMask"] == ["0077"]


# PR_SET_MDWE / PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute=yes asks of the kernel (Linux 6.3+).
_PR_SET_MDWE, _PR_GET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

_MDWE_CHILD = r"""
import ctypes, importlib, mmap, pkgutil, ssl, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(66, 0, 0, 0, 0) == 1, "MDWE is not in force in the child"
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("a writable+executable mapping was allowed: MDWE is not in force")
except OSError:
    pass
import dc_agent, provisioners
names = []
for pkg in (dc_agent, provisioners):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(mod.name)
        names.append(mod.name)
import httpx, nacl.signing, structlog, tenacity, tomli_w
key = nacl.signing.SigningKey.generate()
assert key.verify_key.verify(key.sign(b"x")) == b"x"
ssl.create_default_context()
httpx.Client().close()
print(len(names), "modules imported")
"""


def _mdwe_available() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_GET_MDWE, 0, 0, 0, 0) >= 0


class TestMemoryDenyWriteExecute:
    @pytest.mark.skipif(not sys.platform.startswith("linux") or not _mdwe_available(),
                        reason="the kernel has no PR_SET_MDWE (Linux 6.3+), so MemoryDenyWriteExecute cannot be "
                               "emulated here")
    def test_agent_imports_and_crypto_work_under_mdwe(self):
        """Every dc_agent and provisioners module imports, and signing and TLS set-up work, in a Python
        that may not map writable+executable memory (as MemoryDenyWriteExecute=yes enforces)."""
        def deny_write_execute() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")

        res = subprocess.run([sys.executable, "-c", _MDWE_CHILD], preexec_fn=deny_write_execute,
                             capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == 0, res.stdout + res.stderr
        assert "modules imported" in res.stdout
