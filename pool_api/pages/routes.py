"""The provider web pages under /provider: server-rendered Jinja2, dense tables, a little plain JS.

Every read and every action calls the same functions as the signed provider API (pools, tokens,
agents, offerings); this module only adds sessions, CSRF checks, form parsing and HTML. Refusals
from those functions (ApiError) become an HTML page with the same status: another provider's pool
is 404 here exactly as it is in the API.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from pool_api import agents, instance_health, offerings, pools, provision_stats, tokens
from pool_api.db import now_ns
from pool_api.dispatch_rules import rules_from
from pool_api.errors import ApiError, describe_validation_errors
from pool_api.pages import auth, chart, format as fmt
from pool_api.routing import PROVISIONER_TYPES, REGIONS
from pool_api.schemas import PoolCreate, PoolUpdate, TokenCreate
from pool_api.settings import Settings

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_FILES = {"style.css": "text/css; charset=utf-8", "pages.js": "text/javascript; charset=utf-8"}

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

NOTICES = {
    "pool-created": "Pool created.",
    "pool-updated": "Pool saved.",
    "pool-deleted": "Pool deleted.",
    "agent-revoked": "Agent revoked: its signatures are refused from now on.",
    "token-deleted": "Setup token deleted.",
    "signed-out": "Signed out.",
}

router = APIRouter(prefix="/provider", include_in_schema=False)

templates = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True, undefined=StrictUndefined,
                        trim_blocks=True, lstrip_blocks=True)
templates.filters.update(short_key=fmt.short_key, size_mb=fmt.size_mb, price=fmt.price, percent=fmt.percent,
                         duration_ms=fmt.duration_ms)
templates.globals.update(regions=REGIONS, provisioner_types=PROVISIONER_TYPES, hourly_svg=chart.hourly_svg)


@dataclass
class Ctx:
    """One signed-in page request."""

    request: Request
    engine: sa.Engine
    settings: Settings
    provider: str
    csrf: str
    form: FormData | None = None
    now: int = field(default_factory=now_ns)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return render(self.request, template, status, provider=self.provider, csrf=self.csrf, now=self.now,
                      **values)

    def field(self, name: str) -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else ""


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    now = values.pop("now", None) or now_ns()
    values.setdefault("provider", None)
    values.setdefault("csrf", None)
    values.setdefault("error", None)
    values.setdefault("notice", NOTICES.get(request.query_params.get("done", "")))
    values.setdefault("section", "offerings" if template.startswith("offerings") else "pools")
    values.setdefault("online_window", f"{request.app.state.settings.online_window_ns // fmt.NS} s")
    html = templates.get_template(template).render(
        ago=lambda ns: fmt.ago(ns, now), remaining=lambda ns: fmt.remaining(ns, now), **values)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _engine(request: Request) -> sa.Engine:
    return request.app.state.engine


def _session(engine: sa.Engine, cookie: str | None) -> str | None:
    with engine.begin() as conn:
        return auth.session_provider(conn, cookie)


async def _page(request: Request, view: Callable[[Ctx], Response], *, post: bool = False) -> Response:
    """Resolve the session (none: to sign-in), check CSRF on POST (403), run `view` in a thread."""
    engine = _engine(request)
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    provider = await run_in_threadpool(_session, engine, cookie)
    if provider is None or cookie is None:
        return redirect(auth.LOGIN_PATH)
    form = None
    if post:
        form = await request.form()
        if not auth.csrf_ok(cookie, form.get("csrf")):
            return render(request, "error.html", 403, provider=provider, csrf=auth.csrf_token(cookie),
                          title="Forbidden",
                          message="The form's security token is missing or wrong. Reload the page and try again.")
    ctx = Ctx(request, engine, request.app.state.settings, provider, auth.csrf_token(cookie), form)
    try:
        return await run_in_threadpool(view, ctx)
    except ApiError as exc:
        title = {404: "Not found", 409: "Conflict", 410: "Gone"}.get(exc.status, "Refused")
        return ctx.render("error.html", exc.status, title=title, message=exc.message)


def _validation_message(exc: pydantic.ValidationError) -> str:
    return describe_validation_errors(list(exc.errors()))[1]


# --- sign-in ---------------------------------------------------------------------------------------

NEXT_PATH = re.compile(r"^/provider/[A-Za-z0-9_\-/]*$")


def _next_page(value: str | None) -> str:
    """Where to land after signing in: a /provider/ path of this server only (no open redirect)."""
    if value and NEXT_PATH.match(value) and "//" not in value:
        return value
    return "/provider/pools"


@router.get("/login")
async def login(request: Request, token: str | None = None, next: str | None = None) -> Response:  # noqa: A002
    engine = _engine(request)
    if not token:
        return render(request, "login.html")

    def sign_in() -> str:
        with engine.begin() as conn:
            provider = auth.consume_login_link(conn, token)
            return auth.create_session(conn, provider)

    try:
        cookie = await run_in_threadpool(sign_in)
    except ApiError as exc:
        return render(request, "login.html", exc.status, link_error=exc.message)
    response = redirect(_next_page(next))
    response.set_cookie(auth.SESSION_COOKIE, cookie, max_age=auth.SESSION_TTL_HOURS * 3600, path="/provider",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            auth.end_session(conn, ctx.request.cookies.get(auth.SESSION_COOKIE))
        response = redirect(f"{auth.LOGIN_PATH}?done=signed-out")
        response.delete_cookie(auth.SESSION_COOKIE, path="/provider", httponly=True, samesite="strict")
        return response

    return await _page(request, view, post=True)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC_FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    body = (STATIC_DIR / name).read_bytes()
    return Response(body, media_type=STATIC_FILES[name],
                    headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


# --- pools -----------------------------------------------------------------------------------------

@router.get("")
@router.get("/")
async def home() -> Response:
    return redirect("/provider/pools")


@router.get("/pools")
async def pools_page(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            rows = pools.list_pools(conn, ctx.provider, ctx.settings.online_window_ns)
            for row in rows:
                row["stats"] = provision_stats.pool_stats(conn, row["poolId"], ctx.now)
        names = {row["poolId"]: row["name"] for row in rows}
        return ctx.render("pools.html", pools=rows, pool_names=names)

    return await _page(request, view)


POOL_FIELDS = ("name", "location", "provisionerType", "fallbackPoolId", "fallbackAfterSeconds")


def _pool_form(ctx: Ctx, *, pool: dict[str, Any] | None, values: dict[str, str], status: int = 200,
               error: str | None = None) -> Response:
    """The create/edit form; the fallback choices are the provider's other pools."""
    with ctx.engine.begin() as conn:
        others = [o for o in pools.list_pools(conn, ctx.provider, ctx.settings.online_window_ns)
                  if pool is None or o["poolId"] != pool["poolId"]]
    return ctx.render("pool_form.html", status, pool=pool, values=values, error=error, others=others)


def _pool_values(ctx: Ctx) -> dict[str, str]:
    return {name: ctx.field(name) for name in POOL_FIELDS}


def _pool_body(values: dict[str, str]) -> dict[str, Any]:
    """The form's strings as the API's JSON body (422 naming fallbackAfterSeconds when it is no number)."""
    body: dict[str, Any] = {k: values[k] for k in ("name", "location", "provisionerType")}
    body["fallbackPoolId"] = values["fallbackPoolId"] or None
    delay = values["fallbackAfterSeconds"] or str(pools.DEFAULT_FALLBACK_AFTER_SECONDS)
    if not delay.isdigit():
        raise ApiError(422, "fallbackAfterSeconds: must be a whole number of seconds")
    body["fallbackAfterSeconds"] = int(delay)
    return body


@router.get("/pools/new")
async def new_pool_page(request: Request) -> Response:
    return await _page(request, lambda ctx: _pool_form(
        ctx, pool=None, values={"name": "", "location": "europe", "provisionerType": "proxmox", "fallbackPoolId": "",
                                "fallbackAfterSeconds": str(pools.DEFAULT_FALLBACK_AFTER_SECONDS)}))


@router.post("/pools")
async def create_pool(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        values = _pool_values(ctx)
        try:
            body = PoolCreate.model_validate(_pool_body(values))
        except pydantic.ValidationError as exc:
            return _pool_form(ctx, pool=None, values=values, status=422, error=_validation_message(exc))
        except ApiError as exc:
            return _pool_form(ctx, pool=None, values=values, status=exc.status, error=exc.message)
        try:
            with ctx.engine.begin() as conn:
                pool = pools.create_pool(conn, ctx.provider, body.name, body.location, body.provisioner_type,
                                         body.fallback_pool_id, body.fallback_after_seconds)
        except ApiError as exc:
            return _pool_form(ctx, pool=None, values=values, status=exc.status, error=exc.message)
        return redirect(f"/provider/pools/{pool['poolId']}?done=pool-created")

    return await _page(request, view, post=True)


@router.get("/pools/{pool_id}")
async def pool_page(request: Request, pool_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            detail = pools.pool_detail(conn, ctx.provider, pool_id, ctx.settings.online_window_ns,
                                       rules_from(ctx.settings))
            pending = tokens.list_pending(conn, pool_id)
            instances = instance_health.pool_contracts(conn, ctx.provider, pool_id)
            names = {p["poolId"]: p["name"] for p in pools.list_pools(conn, ctx.provider, 0)}
        return ctx.render("pool.html", pool=detail, tokens=pending, contracts=instances, pool_names=names,
                          failure_limit=ctx.settings.unhealthy_after_failures)

    return await _page(request, view)


@router.get("/pools/{pool_id}/edit")
async def edit_pool_page(request: Request, pool_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            row = pools.get_pool_row(conn, ctx.provider, pool_id)
        pool = pools.pool_json(row._mapping)
        values = {k: pool[k] for k in ("name", "location", "provisionerType")}
        values.update(fallbackPoolId=pool["fallbackPoolId"] or "", fallbackAfterSeconds=str(pool["fallbackAfterSeconds"]))
        return _pool_form(ctx, pool=pool, values=values)

    return await _page(request, view)


@router.post("/pools/{pool_id}/edit")
async def update_pool(request: Request, pool_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            pool = pools.pool_json(pools.get_pool_row(conn, ctx.provider, pool_id)._mapping)
        values = _pool_values(ctx)
        try:
            changes = PoolUpdate.model_validate(_pool_body(values)).changes()
        except pydantic.ValidationError as exc:
            return _pool_form(ctx, pool=pool, values=values, status=422, error=_validation_message(exc))
        except ApiError as exc:
            return _pool_form(ctx, pool=pool, values=values, status=exc.status, error=exc.message)
        try:
            with ctx.engine.begin() as conn:
                pools.update_pool(conn, ctx.provider, pool_id, changes, ctx.settings.online_window_ns)
        except ApiError as exc:
            if exc.status == 404:
                raise
            return _pool_form(ctx, pool=pool, values=values, status=exc.status, error=exc.message)
        return redirect(f"/provider/pools/{pool_id}?done=pool-updated")

    return await _page(request, view, post=True)


@router.post("/pools/{pool_id}/delete")
async def delete_pool(request: Request, pool_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            pools.delete_pool(conn, ctx.provider, pool_id)
        return redirect("/provider/pools?done=pool-deleted")

    return await _page(request, view, post=True)


# --- agents and setup tokens -----------------------------------------------------------------------

def _pool(ctx: Ctx, pool_id: str) -> dict[str, Any]:
    with ctx.engine.begin() as conn:
        return pools.pool_json(pools.get_pool_row(conn, ctx.provider, pool_id)._mapping)


@router.get("/pools/{pool_id}/add-agent")
async def add_agent_page(request: Request, pool_id: str) -> Response:
    return await _page(request, lambda ctx: ctx.render(
        "add_agent.html", pool=_pool(ctx, pool_id), values={"label": "", "expiresInHours": "24"}))


def install_command(request: Request, settings: Settings, token: str) -> str:
    """The one-liner a provider runs on the hypervisor (systemd/install.sh, then `dc-agent setup`)."""
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    return (f"curl -sSL {shlex.quote(base + '/install.sh')} | sudo bash -s -- --token {shlex.quote(token)} "
            f"--api-url {shlex.quote(base)}")


@router.post("/pools/{pool_id}/add-agent")
async def add_agent(request: Request, pool_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        values = {"label": ctx.field("label"), "expiresInHours": ctx.field("expiresInHours") or "24"}
        pool = _pool(ctx, pool_id)
        try:
            hours = int(values["expiresInHours"])
        except ValueError:
            return ctx.render("add_agent.html", 422, pool=pool, values=values,
                              error="expiresInHours: must be a whole number of hours")
        try:
            body = TokenCreate.model_validate({"label": values["label"] or None, "expiresInHours": hours})
        except pydantic.ValidationError as exc:
            return ctx.render("add_agent.html", 422, pool=pool, values=values, error=_validation_message(exc))
        with ctx.engine.begin() as conn:
            row = pools.get_pool_row(conn, ctx.provider, pool_id)
            token, entry = tokens.create_token(conn, row, body.label, body.expires_in_hours)
        return ctx.render("token.html", pool=pool, entry=entry, hours=body.expires_in_hours,
                          command=install_command(ctx.request, ctx.settings, token))

    return await _page(request, view, post=True)


@router.post("/pools/{pool_id}/setup-tokens/{token_id}/delete")
async def delete_token(request: Request, pool_id: str, token_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            pools.get_pool_row(conn, ctx.provider, pool_id)
            tokens.delete_token(conn, ctx.provider, token_id)
        return redirect(f"/provider/pools/{pool_id}?done=token-deleted")

    return await _page(request, view, post=True)


@router.post("/pools/{pool_id}/agents/{agent_pubkey}/revoke")
async def revoke_agent(request: Request, pool_id: str, agent_pubkey: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            pools.get_pool_row(conn, ctx.provider, pool_id)
            agents.revoke(conn, ctx.provider, agent_pubkey)
        return redirect(f"/provider/pools/{pool_id}?done=agent-revoked")

    return await _page(request, view, post=True)


# --- offerings -------------------------------------------------------------------------------------

OFFERINGS_PER_PAGE = 50


def filter_offerings(rows: list[dict[str, Any]], pool: str, product_type: str, search: str,
                     status: str = "") -> list[dict[str, Any]]:
    """The wireframe's filters: pool (a pool id, or "none" for offerings no pool serves), type, status, text."""
    out = [r for r in rows if r["status"] == status] if status else rows
    if pool == "none":
        out = [r for r in out if r["resolvedPool"] is None]
    elif pool:
        out = [r for r in out if r["resolvedPool"] is not None and r["resolvedPool"]["poolId"] == pool]
    if product_type:
        out = [r for r in out if r["productType"] == product_type]
    if search:
        needle = search.casefold()
        out = [r for r in out if needle in r["offeringId"].casefold() or needle in r["name"].casefold()]
    return out


@router.get("/offerings")
async def offerings_page(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        q = ctx.request.query_params
        filters = {"pool": q.get("pool", "")[:64], "type": q.get("type", "")[:32], "q": q.get("q", "").strip()[:200],
                   "status": q.get("status", "") if q.get("status", "") in offerings.STATUSES else ""}
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            page = 1
        with ctx.engine.begin() as conn:
            rows = offerings.list_offerings(conn, ctx.provider)
            pool_list = pools.list_pools(conn, ctx.provider, ctx.settings.online_window_ns)
        unrouted = [r for r in rows if r["resolvedPool"] is None]
        shown = filter_offerings(rows, filters["pool"], filters["type"], filters["q"], filters["status"])
        pages = max(1, -(-len(shown) // OFFERINGS_PER_PAGE))
        page = min(page, pages)
        first = (page - 1) * OFFERINGS_PER_PAGE
        return ctx.render("offerings.html", offerings=shown[first:first + OFFERINGS_PER_PAGE], total=len(rows),
                          matched=len(shown), first=first, page=page, pages=pages, filters=filters,
                          pools=pool_list, types=sorted({r["productType"] for r in rows}), unrouted=unrouted,
                          statuses=offerings.STATUSES,
                          page_link=lambda n: "/provider/offerings?" + urlencode(
                              {**{k: v for k, v in filters.items() if v}, "page": n}))

    return await _page(request, view)


# The console's pages (contracts, agents, offering forms and CSV) live in their own modules, which use Ctx and
# _page from here; they are imported last so that this module is complete when they import it.
from pool_api.pages import agents as agent_pages, contracts as contract_pages, offerings as offering_pages  # noqa: E402

templates.filters.update(utc=fmt.utc)
for _pages in (contract_pages, agent_pages, offering_pages):
    router.include_router(_pages.router)
