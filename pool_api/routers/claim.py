"""POST /providers/{pk}/contracts/claim: lock up to `max` contracts now, or wait up to `waitSeconds` for one.

The endpoint is async: each try runs in the thread pool (one short transaction, pool_api.claims.claim),
and between tries the request waits on the replica's ClaimHub without a thread or a database
connection. It answers as soon as a try got contracts, and `{"contracts": []}` at the deadline, when
the client went away, or when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pool_api import claims
from pool_api.claim_hub import ClaimHub, Waiter
from pool_api.dependencies import AgentDep, EngineDep, SettingsDep
from pool_api.dispatch_rules import rules_from
from pool_api.envelope import ok
from pool_api.metrics import Metrics
from pool_api.schemas import ClaimRequest

router = APIRouter(prefix="/api/v1", tags=["agents"])


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body was read already, so only http.disconnect is left)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.post("/providers/{pubkey}/contracts/claim")
async def claim(pubkey: str, body: ClaimRequest, request: Request, caller: AgentDep, engine: EngineDep,
                settings: SettingsDep):
    hub: ClaimHub = request.app.state.claim_hub
    metrics: Metrics = request.app.state.metrics
    rules = rules_from(settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_seconds
    deadline_ns = time.time_ns() + int(body.wait_seconds * 1e9) if body.wait_seconds > 0 else None
    exclude = list(dict.fromkeys(body.exclude))

    def try_once() -> claims.ClaimResult:
        with engine.begin() as conn:
            return claims.claim(conn, caller, body.max, settings.lock_ttl_seconds, rules, free_slots=body.free_slots,
                                exclude=exclude, waiting_until_ns=deadline_ns)

    waiter = hub.add(caller, body.max, body.free_slots) if deadline_ns is not None else None
    gone = asyncio.create_task(_client_gone(request)) if waiter is not None else None
    result = "empty"
    try:
        items = await _claim_loop(try_once, waiter, gone, deadline, loop)
        if items:
            result = "claimed"
        elif gone is not None and gone.done():
            result = "disconnected"
        elif waiter is not None:
            result = "timeout"
    finally:
        if waiter is not None:
            hub.remove(waiter)
        if gone is not None:
            gone.cancel()
            with contextlib.suppress(BaseException):
                await gone
    metrics.claimed(result, len(items) if result == "claimed" else 0)
    return ok({"contracts": items})


async def _claim_loop(try_once, waiter: Waiter | None, gone: asyncio.Task | None, deadline: float,  # noqa: ANN001
                      loop: asyncio.AbstractEventLoop) -> list[dict]:
    """Try now; then, while waiting, try again whenever the hub grants it, until the deadline."""
    while True:
        if waiter is not None:
            delay = waiter.begin_try()
            if delay:
                await asyncio.sleep(delay)
        outcome = await run_in_threadpool(try_once)
        if waiter is None:
            return outcome.items
        waiter.tried(len(outcome.items), outcome.passed_over, outcome.free_slots)
        if outcome.items or waiter.closed:
            return outcome.items
        remaining = deadline - loop.time()
        if remaining <= 0:
            return []
        granted = asyncio.ensure_future(waiter.granted.wait())
        done, _ = await asyncio.wait({granted, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if granted not in done:
            granted.cancel()
            return []
        if waiter.closed or (gone is not None and gone.done()):
            return []

