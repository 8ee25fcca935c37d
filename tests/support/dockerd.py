"""A Docker daemon for tests, and the images they run, built locally (no registry is reachable here).

The daemon: the host's, when /var/run/docker.sock answers; else `dockerd` started here (as root) with its
own `--data-root`, `--exec-root`, pid file and socket under a temporary directory and an empty config
file, and with everything that would change the host's network off: `--iptables=false
--ip-forward=false --ip-masq=false` and no default bridge (`--bridge=none`). Published ports then go
through docker-proxy (the userland proxy) listening on 127.0.0.1; the containers sit on a bridge
network made for the session, which tests never address directly. It is stopped, and its directory
removed, at the end of the session.

Before any test, a probe container checks that a port published on 127.0.0.1 reaches it.

The images (`docker import` of tarballs assembled from host binaries, cached in the daemon):
- `busybox`: a static busybox with its applets; its command sleeps until SIGTERM. No chpasswd.
- `health`: the same, with a HEALTHCHECK that passes while /tmp/healthy exists.
- `ssh`: busybox plus the host's dropbear (Debian's dropbear-bin) and shadow's chpasswd with its PAM
  modules, with the libraries `ldd` lists; the entrypoint writes an ed25519 host key on first start
  and runs dropbear in the foreground on port 22.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provisioners.docker import DockerProvisioner
from tests.support.wait import wait_until

SYSTEM_SOCKET = "unix:///var/run/docker.sock"
TEST_LABEL = "dc-agent-test.session"
IMAGE_VERSION = "3"
SLEEP_CMD = '["/bin/sh", "-c", "trap \'exit 0\' TERM; sleep 2147483647 & wait"]'
SSH_ENTRYPOINT = """#!/bin/sh
set -e
key=/etc/dropbear/dropbear_ed25519_host_key
[ -s "$key" ] || dropbearkey -t ed25519 -f "$key" >/dev/null 2>&1
exec dropbear -F -E -p 22 -r "$key"
"""
PAM_MODULES = ("pam_unix.so", "pam_deny.so", "pam_permit.so")


class DaemonUnavailable(RuntimeError):
    """No Docker daemon can be used here; the message says why and what to install."""


def _answers(base_url: str) -> bool:
    import docker

    try:
        with docker.APIClient(base_url=base_url, timeout=5) as api:
            return bool(api.ping())
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


# ------------------------------------------------------------------ image root filesystems


def _libraries(binary: str) -> list[str]:
    """The shared libraries (and loader) `ldd` lists for `binary`; [] for a static one."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    return sorted({m.group(1) for m in re.finditer(r"(/\S+) \(0x", out)})


class _RootFs:
    """A tarball for `docker import`, built in memory."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w")
        self._names: set[str] = set()

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.folder("/".join(parts[:i]))

    def _add(self, info: tarfile.TarInfo, content: Any = None) -> bool:
        """Add an entry (and its missing parent folders) once; False if the name was there already."""
        name = info.name = info.name.strip("/")
        if not name or name in self._names:
            return False
        self._parents(name)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        self._tar.addfile(info, content)
        self._names.add(name)
        return True

    def folder(self, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self._add(info)

    def text(self, name: str, content: str, mode: int = 0o644) -> None:
        data = content.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        self._add(info, io.BytesIO(data))

    def link(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        self._add(info)

    def host_file(self, path: str, with_libraries: bool = True, name: str | None = None) -> None:
        """Copy a host file (links resolved) to the same path (or `name`), plus the libraries it needs."""
        real = os.path.realpath(path)
        with open(real, "rb") as handle:
            added = self._add(self._tar.gettarinfo(real, arcname=(name or path).strip("/")), handle)
        if added and with_libraries:
            for lib in _libraries(path):
                self.host_file(lib, with_libraries=False)

    def data(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def _busybox_root(busybox: str) -> _RootFs:
    root = _RootFs()
    root.host_file(busybox, name="bin/busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet not in ("busybox", "chpasswd"):
            root.link(f"bin/{applet}", "busybox")
    root.folder("root", 0o700)
    root.folder("tmp", 0o1777)
    root.folder("var/run")
    root.text("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    root.text("etc/group", "root:x:0:\n")
    root.text("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640)
    root.text("etc/shells", "/bin/sh\n")
    return root


def _ssh_root(busybox: str) -> _RootFs:
    root = _busybox_root(busybox)
    for binary in ("/usr/sbin/dropbear", "/usr/bin/dropbearkey", "/usr/sbin/chpasswd"):
        root.host_file(binary)
    root.folder("etc/dropbear", 0o700)
    for name in ("chpasswd", "common-password"):
        root.host_file(f"/etc/pam.d/{name}", with_libraries=False)
    security = Path("/lib/x86_64-linux-gnu/security")
    if not security.is_dir():
        security = Path(next(iter(Path("/").glob("lib*/*/security/pam_unix.so")), "/lib/security/pam_unix.so")).parent
    for module in PAM_MODULES:
        root.host_file(str(security / module))
    if Path("/etc/login.defs").exists():
        root.host_file("/etc/login.defs", with_libraries=False)
    root.text("entrypoint", SSH_ENTRYPOINT, 0o755)
    return root


# ------------------------------------------------------------------ the daemon


@dataclass
class DockerDaemon:
    base_url: str
    network: str
    session: str
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    images: dict[str, str] = field(default_factory=dict)

    def api(self) -> Any:
        import docker

        return docker.APIClient(base_url=self.base_url, timeout=60)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Driver settings for this daemon: SSH published on 127.0.0.1, the session's agent label."""
        out: dict[str, Any] = {
            "base_url": self.base_url,
            "default_image": self.image("busybox"),
            "host_ip": "127.0.0.1",
            "network": self.network,
            "agent_label": self.session,
            "pull_timeout_seconds": 10,
            "api_timeout_seconds": 30,
            "stop_timeout_seconds": 5,
        }
        out.update(overrides)
        return out

    def containers(self, **filters: Any) -> list[dict[str, Any]]:
        """Summaries of this session's containers (driver-made and foreign test ones), running or not."""
        with self.api() as api:
            mine = api.containers(all=True, filters={"label": f"dc-agent.agent={self.session}", **filters})
            foreign = api.containers(all=True, filters={"label": f"{TEST_LABEL}={self.session}", **filters})
        return mine + [c for c in foreign if c["Id"] not in {m["Id"] for m in mine}]

    def image(self, kind: str) -> str:
        """The tag of a test image, built (once per daemon) if missing."""
        if kind in self.images:
            return self.images[kind]
        tag = f"dc-agent-test/{kind}:{IMAGE_VERSION}"
        busybox = shutil.which("busybox") or "/bin/busybox"
        with self.api() as api:
            try:
                api.inspect_image(tag)
            except Exception:  # noqa: BLE001 - not there: build it
                if not os.path.exists(busybox):
                    pytest.skip("busybox is not installed (apt-get install busybox-static); no test image")
                if kind == "ssh":
                    missing = [p for p in ("/usr/sbin/dropbear", "/usr/sbin/chpasswd") if not os.path.exists(p)]
                    if missing:
                        pytest.skip(f"{', '.join(missing)} missing (apt-get install dropbear-bin passwd); "
                                    "no SSH test image")
                    data, changes = _ssh_root(busybox).data(), ['CMD ["/entrypoint"]', "EXPOSE 22"]
                elif kind == "health":
                    data = _busybox_root(busybox).data()
                    changes = ["HEALTHCHECK --interval=500ms --timeout=5s --retries=1 CMD test -f /tmp/healthy",
                               'CMD ["/bin/sh", "-c", "touch /tmp/healthy; trap \'exit 0\' TERM; '
                               'sleep 2147483647 & wait"]']
                elif kind == "busybox":
                    data, changes = _busybox_root(busybox).data(), [f"CMD {SLEEP_CMD}"]
                else:
                    raise ValueError(kind) from None
                repo, _, version = tag.partition(":")
                api.import_image_from_data(data, repository=repo, tag=version, changes=changes)
        self.images[kind] = tag
        return tag

    def clean(self) -> None:
        """Remove every container this session made (driver-made or foreign)."""
        with self.api() as api:
            for c in self.containers():
                try:
                    api.remove_container(c["Id"], force=True, v=True)
                except Exception:  # noqa: BLE001 - gone already
                    pass

    def stop(self) -> None:
        try:
            self.clean()
            with self.api() as api:
                api.remove_network(self.network)
        except Exception:  # noqa: BLE001 - a daemon that died has nothing left to clean
            pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
            self.proc = None
        if self.root is not None:
            _unmount_below(self.root)
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _unmount_below(root: Path) -> None:
    """Lazy-unmount whatever dockerd left mounted under `root` (overlays, netns) so it can be removed."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for point in sorted((m for m in mounts if m.startswith(str(root))), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _start_dockerd() -> tuple[subprocess.Popen[bytes], Path, str]:
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None)
    if dockerd is None:
        raise DaemonUnavailable("dockerd is not installed (apt-get install docker.io) and "
                                "/var/run/docker.sock does not answer")
    if os.geteuid() != 0:
        raise DaemonUnavailable("dockerd must run as root here and /var/run/docker.sock does not answer")
    root = Path(tempfile.mkdtemp(prefix="dc-dockerd-"))
    (root / "daemon.json").write_text("{}\n")
    socket_url = f"unix://{root}/docker.sock"
    argv = [dockerd, "--config-file", str(root / "daemon.json"), "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"), "--host", socket_url,
            "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
            "--userland-proxy=true", "--log-level=warn"]
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon writes to it until stop()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()

    def tail() -> str:
        return (root / "dockerd.log").read_text(errors="replace")[-2000:]

    try:
        wait_until(lambda: proc.poll() is not None or _answers(socket_url), timeout=60,
                   what="dockerd to answer", interval=0.2, details=tail)
    except AssertionError:
        proc.kill()
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)
        raise DaemonUnavailable(f"dockerd did not answer within 60 s: {tail()}") from None
    if proc.poll() is not None:
        text = tail()
        shutil.rmtree(root, ignore_errors=True)
        raise DaemonUnavailable(f"dockerd exited with status {proc.returncode}: {text}")
    return proc, root, socket_url


def start_daemon() -> DockerDaemon:
    """The host's daemon if it answers, else our own; plus a bridge network for the session."""
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None
    base_url = SYSTEM_SOCKET
    if not _answers(SYSTEM_SOCKET):
        proc, root, base_url = _start_dockerd()
    session = uuid.uuid4().hex
    daemon = DockerDaemon(base_url=base_url, network=f"dc-test-{session[:10]}", session=session, proc=proc, root=root)
    try:
        with daemon.api() as api:
            api.create_network(daemon.network, driver="bridge", labels={TEST_LABEL: session})
    except Exception as exc:
        daemon.stop()
        raise DaemonUnavailable(f"cannot create a bridge network on the daemon: {exc}") from None
    try:
        _probe_published_port(daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _probe_published_port(daemon: DockerDaemon) -> None:
    """A port published on 127.0.0.1 must reach a container on the session's network (through
    docker-proxy, as iptables is off); otherwise the docker tests cannot run here."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with daemon.api() as api:
        made = api.create_container(
            daemon.image("busybox"), ["nc", "-ll", "-p", "22", "-e", "/bin/echo", "dc-probe"], ports=[22],
            labels={TEST_LABEL: daemon.session},
            host_config=api.create_host_config(port_bindings={22: ("127.0.0.1", port)}, network_mode=daemon.network))
        try:
            api.start(made["Id"])

            def answer() -> bytes:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                        return conn.recv(64)
                except OSError:
                    return b""

            wait_until(lambda: b"dc-probe" in answer(), timeout=20, interval=0.1,
                       what="a port published on 127.0.0.1 to reach a container")
        except AssertionError as exc:
            raise DaemonUnavailable(f"published ports do not reach containers here: {exc}") from None
        finally:
            api.remove_container(made["Id"], force=True)


_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """One daemon per test session, whichever modules ask for it (skips, saying why, without one)."""
    if "error" in _shared:
        pytest.skip(_shared["error"])
    if "daemon" not in _shared:
        try:
            _shared["daemon"] = start_daemon()
        except DaemonUnavailable as exc:
            _shared["error"] = f"no Docker daemon: {exc}"
            pytest.skip(_shared["error"])
        except pytest.skip.Exception as exc:  # a missing package for the test images
            _shared["error"] = str(exc.msg)
            raise
        _shared["users"] = 0
    _shared["users"] += 1
    try:
        yield _shared["daemon"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared.pop("daemon").stop()


@pytest.fixture
def daemon(docker_daemon: DockerDaemon) -> Iterator[DockerDaemon]:
    """The session's daemon, with every container a test made removed after it."""
    try:
        yield docker_daemon
    finally:
        docker_daemon.clean()


def inspect(daemon: DockerDaemon, container_id: str) -> dict[str, Any]:
    """`docker inspect` of a container."""
    with daemon.api() as api:
        return api.inspect_container(container_id)


class Pausing(DockerProvisioner):
    """Stops at one step until `resume` is set (the test acts meanwhile)."""

    pause_at = ""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.reached, self.resume = threading.Event(), threading.Event()

    def checkpoint(self, step: str, name: str, cancel: threading.Event) -> None:
        if step == self.pause_at:
            self.reached.set()
            self.resume.wait(60)
        super().checkpoint(step, name, cancel)


class Background:
    """A call run in a thread; `error` is what it raised (None once it returned)."""

    def __init__(self, call: Any) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Any) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float = 60) -> BaseException | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background call did not end"
        return self.error


@contextmanager
def silent_registry() -> Iterator[tuple[socket.socket, str]]:
    """A loopback "registry" that accepts connections and never answers: (its socket, an image on it)."""
    with socket.socket() as registry:
        registry.bind(("127.0.0.1", 0))
        registry.listen(8)
        registry.settimeout(30)
        yield registry, f"127.0.0.1:{registry.getsockname()[1]}/dc-agent-test/stalled:1"


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    return wait_until(predicate, timeout=timeout, what=what, interval=0.05)


def exec_in(daemon: DockerDaemon, container_id: str, *argv: str) -> tuple[int, str]:
    """Run a command in a container through the API (test set-up and checks): (exit code, output)."""
    with daemon.api() as api:
        exec_id = api.exec_create(container_id, list(argv))["Id"]
        out = api.exec_start(exec_id)
        return int(api.exec_inspect(exec_id)["ExitCode"]), out.decode(errors="replace")
