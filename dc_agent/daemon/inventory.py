"""The host inventory and provisioner list the heartbeats carry, collected off the event loop.

A daemon thread asks every provisioner for its `inventory()` and `health()` at start and then every
INTERVAL_SECONDS; the heartbeat sends the latest result (nothing until the first collection finished: a
slow or hung PVE API delays only the inventory, never a heartbeat or the loop). The first result nudges
the heartbeat to go out at once. Each distinct failure is logged once, and once more when it clears.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

INTERVAL_SECONDS = 600.0
REQUIRED = ("cpuCores", "cpuThreads", "memoryTotalMb", "memoryAvailableMb")


def _valid(part: Any) -> bool:
    return isinstance(part, dict) and all(isinstance(part.get(k), int) for k in REQUIRED)


class InventoryCollector:
    def __init__(self, driver: Any, log: Any, *, on_first: Callable[[], None] | None = None,
                 interval: float = INTERVAL_SECONDS) -> None:
        self.driver = driver
        self.log = log
        self.interval = interval
        self.resources: dict[str, Any] | None = None
        self.provisioners: list[dict[str, Any]] | None = None
        self._on_first = on_first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: dict[str, str] = {}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inventory", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self.resources is None and self.provisioners is None
            try:
                self.collect_once()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any driver bug
                self._failed("inventory", exc)
            if first and self._on_first is not None and (self.resources or self.provisioners):
                try:
                    self._on_first()
                except RuntimeError:  # the event loop is gone: the agent is stopping
                    return
            self._stop.wait(self.interval)

    def _failed(self, what: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"[:500]
        if self._failing.get(what) != text:
            self._failing[what] = text
            self.log.warning("host inventory: " + what + " failed; the heartbeat goes without it", error=text)

    def _ok(self, what: str) -> None:
        if self._failing.pop(what, None) is not None:
            self.log.info("host inventory: " + what + " works again")

    def collect_once(self) -> None:
        """Blocking: every provisioner's inventory and health, merged (the default's CPU and memory)."""
        from provisioners.inventory import merge
        from provisioners.multi import describe, members_of

        parts: list[dict[str, Any] | None] = []
        for member in members_of(self.driver):
            what = f"provisioner {member.name}"
            try:
                part = member.driver.inventory()
                if not _valid(part):
                    raise ValueError(f"inventory() gave {type(part).__name__} without {', '.join(REQUIRED)}")
            except Exception as exc:  # noqa: BLE001 - one driver's failure leaves the others' figures
                self._failed(what, exc)
                parts.append(None)
                continue
            self._ok(what)
            parts.append(part)
        resources = merge(parts[0], [p for p in parts[1:] if p]) if parts else None
        if resources is not None:
            self.resources = resources
        self.provisioners = [{k: v for k, v in item.items() if k != "checks"} for item in describe(self.driver)]
