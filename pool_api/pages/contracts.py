"""The console's contract pages: the list with its filters, one contract's timeline, and the two safe actions
(release a stuck lock, retry now), each a GET confirmation page and then a POST with the CSRF token.

Everything reads the signed-in provider's contracts only; another provider's contract id is 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dc_common.redact import redact_mapping
from pool_api import contract_events, contract_list, interventions
from pool_api.contracts import PROVISIONABLE, STATUSES, has_ended
from pool_api.pages import timeline
from pool_api.pages.format import utc
from pool_api.pages.routes import Ctx, _page, redirect
from pool_api.pools import pools_of_provider

router = APIRouter()

NOTICES = {"lock-released": "Lock released: any agent of the contract's pool can take it now.",
           "retry-requested": "Retry requested: the failure count is 0 and the contract is offered to the agents again."}


def _filters(ctx: Ctx) -> contract_list.Filters:
    q = ctx.request.query_params
    status = q.get("status", "")
    try:
        minutes = int(q.get("minutes", str(contract_list.STUCK_MINUTES)))
    except ValueError:
        minutes = contract_list.STUCK_MINUTES
    return contract_list.Filters(pool=q.get("pool", "")[:64], status=status if status in STATUSES else "",
                                 stuck=q.get("stuck", "") == "1",
                                 stuck_minutes=min(max(minutes, 1), contract_list.MAX_STUCK_MINUTES))


def _query(f: contract_list.Filters, **extra: str) -> dict[str, str]:
    out = {"pool": f.pool, "status": f.status, "stuck": "1" if f.stuck else ""}
    if f.stuck_minutes != contract_list.STUCK_MINUTES:
        out["minutes"] = str(f.stuck_minutes)
    return {k: v for k, v in {**out, **extra}.items() if v}


@router.get("/contracts")
async def contracts_page(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        f = _filters(ctx)
        after = contract_list.parse_cursor(ctx.request.query_params.get("after"))
        with ctx.engine.begin() as conn:
            page = contract_list.list_page(conn, ctx.provider, f, ctx.now, after)
            pools = pools_of_provider(conn, ctx.provider)
        query = _query(f)
        return ctx.render("contracts.html", section="contracts", page=page, filters=f, statuses=STATUSES,
                          pools=sorted(pools, key=lambda p: (p["created_at_ns"], p["pool_id"])),
                          first_page=after is None, default_minutes=contract_list.STUCK_MINUTES,
                          first_link="/provider/contracts" + (f"?{urlencode(query)}" if query else ""),
                          next_link=None if page["next"] is None else
                          f"/provider/contracts?{urlencode(_query(f, after=page['next']))}")

    return await _page(request, view)


def _actions(row: Any, now: int) -> dict[str, bool]:
    live_lock = row.lock_agent is not None and row.lock_expires_ns is not None and row.lock_expires_ns >= now
    return {"release": row.lock_agent is not None,
            "retry": (row.status in PROVISIONABLE and row.payment_status == "succeeded" and not has_ended(row, now)
                      and not live_lock)}


@router.get("/contracts/{contract_id}")
async def contract_page(request: Request, contract_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            row = contract_list.get_row(conn, ctx.provider, contract_id)
            events = contract_events.events(conn, contract_id)
            pools = pools_of_provider(conn, ctx.provider)
        details = redact_mapping(row.instance_details) if isinstance(row.instance_details, dict) else None
        return ctx.render("contract.html", section="contracts", c=contract_list.row_json(row, pools, ctx.now),
                          raw=row, details=details, entries=timeline.build(row, events, ctx.now),
                          actions=_actions(row, ctx.now),
                          notice=NOTICES.get(ctx.request.query_params.get("done", "")))

    return await _page(request, view)


def _confirm(ctx: Ctx, row: Any, action: str) -> Response:
    c = contract_list.row_json(row, [], ctx.now)
    if action == "release":
        if row.lock_agent is None:
            return ctx.render("error.html", 409, title="Conflict", message="The contract is not locked: nothing to release.")
        return ctx.render("confirm.html", section="contracts", title="Release the lock?", action=f"/provider/contracts/{row.contract_id}/release",
                          button="Release lock", cancel=f"/provider/contracts/{row.contract_id}",
                          fields={"holder": row.lock_agent}, lines=[
                              f"Contract {row.contract_id} is locked by agent {row.lock_agent}"
                              + (f" since {utc(c['lockSinceNs'])}" if c["lockSinceNs"] else "")
                              + f"; the lock runs until {utc(row.lock_expires_ns)}.",
                              "Releasing frees it for any agent of its pool at once. If that agent is still working, "
                              "its report is refused until it locks again; should two instances result, reconcile "
                              "removes the one the server did not record."])
    return ctx.render("confirm.html", section="contracts", title="Retry now?", action=f"/provider/contracts/{row.contract_id}/retry",
                      button="Retry now", cancel=f"/provider/contracts/{row.contract_id}", fields={}, lines=[
                          f"Contract {row.contract_id} failed {row.failure_count} time(s)"
                          + (f"; the last error: {row.last_error}" if row.last_error else "."),
                          "Retrying sets its failure count to 0 (it leaves the stuck filter) and offers it to every "
                          "agent of its pool now. The error stays in the history."])


def _action_routes(action: str, run: Any, done: str) -> None:
    async def confirm(request: Request, contract_id: str) -> Response:
        def view(ctx: Ctx) -> Response:
            with ctx.engine.begin() as conn:
                row = contract_list.get_row(conn, ctx.provider, contract_id)
            return _confirm(ctx, row, action)

        return await _page(request, view)

    async def act(request: Request, contract_id: str) -> Response:
        def view(ctx: Ctx) -> Response:
            with ctx.engine.begin() as conn:
                run(ctx, conn, contract_id)
            return redirect(f"/provider/contracts/{contract_id}?done={done}")

        return await _page(request, view, post=True)

    router.add_api_route(f"/contracts/{{contract_id}}/{action}", confirm, methods=["GET"])
    router.add_api_route(f"/contracts/{{contract_id}}/{action}", act, methods=["POST"])


_action_routes("release", lambda ctx, conn, cid: interventions.release_lock(conn, ctx.provider, cid, ctx.field("holder")),
               "lock-released")
_action_routes("retry", lambda ctx, conn, cid: interventions.retry_now(conn, ctx.provider, cid), "retry-requested")
