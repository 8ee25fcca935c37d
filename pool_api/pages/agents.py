"""The console's agent page: version, dialect, capacity, provisioners, inventory, last errors, the health of
its contracts; and revoke, behind a confirmation page and a POST with the CSRF token. Another provider's
agent is 404."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pool_api import agent_detail, agents
from pool_api.pages.routes import Ctx, _page, redirect

router = APIRouter()

NOTICES = {"agent-revoked": "Agent revoked: its signatures are refused from now on."}


def _detail(ctx: Ctx, agent_pubkey: str) -> dict:
    with ctx.engine.begin() as conn:
        return agent_detail.agent_detail(conn, ctx.provider, agent_pubkey, ctx.settings.online_window_ns, ctx.now)


@router.get("/agents/{agent_pubkey}")
async def agent_page(request: Request, agent_pubkey: str) -> Response:
    def view(ctx: Ctx) -> Response:
        return ctx.render("agent.html", a=_detail(ctx, agent_pubkey),
                          notice=NOTICES.get(ctx.request.query_params.get("done", "")))

    return await _page(request, view)


@router.get("/agents/{agent_pubkey}/revoke")
async def revoke_confirm(request: Request, agent_pubkey: str) -> Response:
    def view(ctx: Ctx) -> Response:
        a = _detail(ctx, agent_pubkey)
        name = a["label"] or a["agentPubkey"]
        if a["revokedAtNs"] is not None:
            return ctx.render("error.html", 409, title="Conflict", message=f"Agent {name} is already revoked.")
        return ctx.render("confirm.html", title="Revoke the agent?", action=f"/provider/agents/{a['agentPubkey']}/revoke",
                          button="Revoke", cancel=f"/provider/agents/{a['agentPubkey']}", fields={}, lines=[
                              f"Agent {name} ({a['agentPubkey']}) of pool {a['poolName'] or '—'} can no longer sign "
                              "requests once revoked: it gets no contracts and its reports are refused.",
                              f"It holds {a['locks']} lock(s) now; they expire and other agents of the pool take "
                              "the contracts over. A revoked key cannot be registered again: set the host up with "
                              "a new token."])

    return await _page(request, view)


@router.post("/agents/{agent_pubkey}/revoke")
async def revoke(request: Request, agent_pubkey: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            out = agents.revoke(conn, ctx.provider, agent_pubkey)
        return redirect(f"/provider/agents/{out['agentPubkey']}?done=agent-revoked")

    return await _page(request, view, post=True)
