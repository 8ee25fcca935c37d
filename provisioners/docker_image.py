"""Making sure a contract's image is on the daemon: a pull only when it is absent, bounded in time.

docker-py's own `pull()` reads its stream with no timeout at all, so a registry that stalls would hold
the contract's lease forever. The pull here runs in a worker thread on its own client, reading with a
per-read timeout; the caller waits at most `timeout` seconds (and stops at once on cancel), then the
worker closes the stream, which makes dockerd abandon the pull.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import docker
import requests
from docker.utils import parse_repository_tag

from provisioners.base import Cancelled, ProvisionError

log = logging.getLogger(__name__)
_MSG_MAX = 300


def short(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MSG_MAX else text[: _MSG_MAX - 1] + "…"


def present(api: docker.APIClient, image: str) -> bool:
    try:
        api.inspect_image(image)
    except docker.errors.NotFound:  # ImageNotFound included
        return False
    return True


class _Pull:
    """One pull in a worker thread; `error` is None on success."""

    def __init__(self, base_url: str, image: str, read_timeout: float) -> None:
        self.base_url, self.image, self.read_timeout = base_url, image, read_timeout
        self.error: str | None = None
        self.done = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"docker-pull-{image}", daemon=True)

    def _run(self) -> None:
        try:
            self.error = self._pull()
        except (docker.errors.DockerException, requests.RequestException, OSError, ValueError) as exc:
            self.error = short(f"{type(exc).__name__}: {exc}")
        finally:
            self.done.set()

    def _pull(self) -> str | None:
        repo, tag = parse_repository_tag(self.image)
        with docker.APIClient(base_url=self.base_url, timeout=self.read_timeout) as api:
            url = f"{api.base_url}/v{api.api_version}/images/create"
            with api.post(url, params={"fromImage": repo, "tag": tag or "latest"}, stream=True,
                          timeout=self.read_timeout) as resp:
                if resp.status_code >= 400:
                    try:
                        return short(resp.json().get("message") or resp.text)
                    except ValueError:
                        return short(resp.text or f"HTTP {resp.status_code}")
                for line in resp.iter_lines():
                    if self.stop.is_set():
                        return "stopped"
                    if not line:
                        continue
                    item = json.loads(line)
                    if item.get("error"):
                        return short(item.get("error"))
            if not present(api, self.image):
                return "the pull ended but the image is not on the daemon"
        return None


def ensure_image(api: docker.APIClient, base_url: str, image: str, *, timeout: float, read_timeout: float,
                 cancel: threading.Event) -> bool:
    """Pull `image` unless the daemon has it; True if it was pulled. ProvisionError (Cancelled) otherwise."""
    if present(api, image):
        return False
    log.info("docker: pulling image %s (at most %g s)", image, timeout)
    pull = _Pull(base_url, image, min(read_timeout, timeout))
    pull.thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not pull.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if cancel.is_set():
                raise Cancelled(f"cancelled while pulling image {image}")
            if time.monotonic() >= deadline:
                raise ProvisionError(f"pulling image {image} did not finish within {timeout:g} s "
                                     "(pull_timeout_seconds); pull it on the host beforehand, or raise the limit")
    finally:
        pull.stop.set()
    if pull.error is not None:
        raise ProvisionError(f"image {image} is not on the Docker host and pulling it failed: {pull.error}")
    return True
