"""The waiting claims of one replica, and who of them tries when something arrives.

A claim that found nothing waits here as a `Waiter` (an asyncio.Event: no thread and no database
connection while it waits). Waiters are grouped by (provider, pool). A wake-up for a provider
(pool_api.wakeups: PostgreSQL NOTIFY, or this process's own commits on SQLite) and the periodic
re-check (`claim_recheck_seconds`, default 2 s, which also covers lost notifications, lapsed locks and
fallback delays running out) each start a *round* per group, one round at a time per group:

1. `claims.survey`: how many contracts are free for the pool, and the most free slots of any waiting
   healthy agent of the pool in the database (so on every replica);
2. the waiters are ordered: not passed over first, then most free slots first; they are granted a try in
   batches that together want as many contracts as are free, until the contracts are gone, the
   waiters are, or two tries came back empty (sticky contracts or exclusions they cannot take);
3. the capacity rule: a granted waiter whose agent has fewer free slots than the best waiting agent of its
   pool (this replica's or another's) waits 5 ms per slot of difference (at most 50 ms) before its try,
   so the agent with the most free slots gets a contract that arrives while several wait.

No state here is needed by another replica: which agents wait, and their free slots, are also written
to agent_delegations by the claim itself (`claim_waiting_until_ns`, `free_slots`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import sqlalchemy as sa
import structlog
from starlette.concurrency import run_in_threadpool

from pool_api import claims, wakeups
from pool_api.auth import Caller
from pool_api.dispatch_rules import DispatchRules

log = structlog.get_logger("pool_api.claim_hub")

CAPACITY_STEP_SECONDS = 0.005
CAPACITY_MAX_DELAY_SECONDS = 0.05
EMPTY_TRIES_PER_ROUND = 2
TRY_TIMEOUT_SECONDS = 10.0

Key = tuple[str, "str | None"]


def capacity_delay(best_free_slots: int | None, free_slots: int | None) -> float:
    """Seconds a claim waits before its try because a waiting agent of its pool has more free slots."""
    if best_free_slots is None or free_slots is None or free_slots >= best_free_slots:
        return 0.0
    return min(CAPACITY_MAX_DELAY_SECONDS, CAPACITY_STEP_SECONDS * (best_free_slots - free_slots))


class Waiter:
    """One waiting claim. The hub grants it a try; the claim reports how many contracts the try got."""

    def __init__(self, caller: Caller, want: int, free_slots: int | None) -> None:
        self.caller = caller
        self.want = want
        self.free_slots = free_slots
        self.passed_over = False
        self.closed = False
        self.granted = asyncio.Event()
        self._delay = 0.0
        self._outcome: asyncio.Future[int] | None = None
        self._last_got = 0

    @property
    def key(self) -> Key:
        return (self.caller.provider_pubkey, self.caller.pool_id)

    def grant(self, delay: float) -> asyncio.Future[int]:
        """Let the claim try again after `delay` s; the future gets the number of contracts the try got."""
        if self._outcome is None or self._outcome.done():
            self._outcome = asyncio.get_running_loop().create_future()
        self._delay = delay
        self.granted.set()
        return self._outcome

    def begin_try(self) -> float:
        """Called by the claim before a try: the delay it must wait first."""
        self.granted.clear()
        delay, self._delay = self._delay, 0.0
        return delay

    def tried(self, got: int, passed_over: bool, free_slots: int | None) -> None:
        """Called by the claim after a try. A grant that came during the try waits for the next one."""
        self._last_got = got
        self.passed_over = passed_over
        if free_slots is not None:
            self.free_slots = free_slots
        if self._outcome is not None and not self._outcome.done() and not self.granted.is_set():
            self._outcome.set_result(got)

    def close(self) -> None:
        self.closed = True
        self.granted.set()
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(self._last_got)


class ClaimHub:
    def __init__(self, engine: sa.Engine, rules: DispatchRules, recheck_seconds: float) -> None:
        self.engine = engine
        self.rules = rules
        self.recheck_seconds = recheck_seconds
        self.closing = False
        self._waiters: dict[Key, set[Waiter]] = {}
        self._rounds: dict[Key, asyncio.Task[None]] = {}
        self._again: set[Key] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._tick()))
        if self.engine.dialect.name == "postgresql":
            self._tasks.append(asyncio.create_task(wakeups.listen(self.engine, self.wake_provider, self.wake_all)))
        else:
            wakeups.install_local(self.engine, self.wake_threadsafe)

    def release_all(self) -> None:
        """Answer every waiting claim now (empty) and accept no new waits: the server is stopping."""
        self.closing = True
        for group in list(self._waiters.values()):
            for waiter in list(group):
                waiter.close()

    async def stop(self) -> None:
        self.release_all()
        wakeups.uninstall_local(self.engine)
        for task in [*self._tasks, *self._rounds.values()]:
            task.cancel()
        for task in [*self._tasks, *self._rounds.values()]:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()

    # --- waiters ----------------------------------------------------------------------------------

    def add(self, caller: Caller, want: int, free_slots: int | None) -> Waiter:
        waiter = Waiter(caller, want, free_slots)
        if self.closing:
            waiter.close()
        self._waiters.setdefault(waiter.key, set()).add(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        waiter.close()
        group = self._waiters.get(waiter.key)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[waiter.key]

    @property
    def waiting(self) -> int:
        return sum(len(group) for group in self._waiters.values())

    # --- wake-ups ---------------------------------------------------------------------------------

    def wake_threadsafe(self, provider_pubkey: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake_provider, provider_pubkey)

    def wake_provider(self, provider_pubkey: str) -> None:
        self._schedule(key for key in self._waiters if key[0] == provider_pubkey)

    def wake_all(self) -> None:
        self._schedule(list(self._waiters))

    def _schedule(self, keys: Iterable[Key]) -> None:
        for key in list(keys):
            if key in self._rounds:
                self._again.add(key)
            else:
                self._rounds[key] = asyncio.create_task(self._rounds_for(key))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_seconds)
            self.wake_all()

    async def _rounds_for(self, key: Key) -> None:
        try:
            while True:
                self._again.discard(key)
                try:
                    await self._round(key)
                except Exception as exc:  # noqa: BLE001 - the next wake-up or tick tries again
                    log.warning("claim_round_failed", error=f"{type(exc).__name__}: {exc}")
                if key not in self._again:
                    return
        finally:
            self._rounds.pop(key, None)

    def _survey(self, key: Key) -> claims.Survey:
        with self.engine.begin() as conn:
            return claims.survey(conn, key[0], key[1], self.rules)

    async def _round(self, key: Key) -> None:
        if not self._waiters.get(key):
            return
        found = await run_in_threadpool(self._survey, key)
        remaining = found.claimable
        if remaining <= 0:
            return
        order = sorted(self._waiters.get(key, ()), key=lambda w: (w.passed_over, -(w.free_slots or 0)))
        local_best = max((w.free_slots or 0 for w in order if not w.passed_over), default=None)
        best = max((v for v in (found.best_free_slots, local_best) if v is not None), default=None)
        empty = 0
        while remaining > 0 and empty < EMPTY_TRIES_PER_ROUND and order:
            batch, wanted = [], 0
            while order and wanted < remaining:
                waiter = order.pop(0)
                if not waiter.closed:
                    batch.append(waiter)
                    wanted += waiter.want
            if not batch:
                return
            tries = [w.grant(capacity_delay(best, w.free_slots)) for w in batch]
            done, _late = await asyncio.wait(tries, timeout=TRY_TIMEOUT_SECONDS)
            for outcome in tries:
                got = outcome.result() if outcome in done else 0
                remaining -= got
                empty += got == 0
