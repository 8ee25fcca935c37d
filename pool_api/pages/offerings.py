"""The console's offering pages: + New and Edit (every field of an offering, the explicit pool set or cleared,
the pool it routes to shown once saved), Export CSV and Import CSV (pool_api.offerings_csv, the same module
as `dc-pool-api offering import/export`). Another provider's offering is 404."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pool_api import offerings, offerings_csv
from pool_api.errors import ApiError
from pool_api.pages.routes import SECURITY_HEADERS, Ctx, _page, redirect
from pool_api.pools import list_pools

router = APIRouter()

FORM_NAMES = offerings_csv.CAMEL_NAMES  # CSV column -> form field
NOTICES = {"offering-created": "Offering created.", "offering-saved": "Offering saved."}
EXPORT_NAME = "offerings.csv"


def _values(o: dict[str, Any] | None) -> dict[str, str]:
    """The form's text values of a saved offering (or the defaults of a new one)."""
    if o is None:
        return {camel: "" for camel in FORM_NAMES.values()} | {"productType": "compute", "status": "active"}
    out = {}
    for camel in FORM_NAMES.values():
        value = o.get(camel)
        out[camel] = "" if value is None else json.dumps(value, indent=1) if isinstance(value, dict) else \
            repr(value) if isinstance(value, float) else str(value)
    return out


def _form(ctx: Ctx, *, offering: dict[str, Any] | None, values: dict[str, str], status: int = 200,
          error: str | None = None) -> Response:
    with ctx.engine.begin() as conn:
        pools = list_pools(conn, ctx.provider, ctx.settings.online_window_ns)
    return ctx.render("offering_form.html", status, section="offerings", offering=offering, values=values,
                      pools=pools, statuses=offerings.STATUSES, error=error,
                      notice=NOTICES.get(ctx.request.query_params.get("done", "")))


def _submitted(ctx: Ctx, offering_id: str | None) -> tuple[dict[str, str], Any]:
    """(the form's values, the checked body); the body is None and values carry `_error` when invalid."""
    values = {camel: ctx.field(camel) for camel in FORM_NAMES.values()}
    if offering_id is not None:
        values["offeringId"] = offering_id
    raw = {column: values[camel] for column, camel in FORM_NAMES.items()}
    try:
        return values, offerings_csv.parse_fields(raw, FORM_NAMES)
    except ValueError as exc:
        return values | {"_error": str(exc)}, None


@router.get("/offerings/new")
async def new_offering_page(request: Request) -> Response:
    return await _page(request, lambda ctx: _form(ctx, offering=None, values=_values(None)))


@router.post("/offerings/new")
async def create_offering(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        values, body = _submitted(ctx, None)
        if body is None:
            return _form(ctx, offering=None, values=values, status=422, error=values["_error"])
        try:
            with ctx.engine.begin() as conn:
                created = offerings.create_offering(conn, ctx.provider, body.model_dump(exclude={"offering_id"}),
                                                    body.offering_id)
        except ApiError as exc:
            return _form(ctx, offering=None, values=values, status=exc.status, error=exc.message)
        return redirect(f"/provider/offerings/{created['offeringId']}/edit?done=offering-created")

    return await _page(request, view, post=True)


@router.get("/offerings/{offering_id}/edit")
async def edit_offering_page(request: Request, offering_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            o = offerings.get_offering(conn, ctx.provider, offering_id)
        return _form(ctx, offering=o, values=_values(o))

    return await _page(request, view)


@router.post("/offerings/{offering_id}/edit")
async def update_offering(request: Request, offering_id: str) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            o = offerings.get_offering(conn, ctx.provider, offering_id)
        values, body = _submitted(ctx, offering_id)
        if body is None:
            return _form(ctx, offering=o, values=values, status=422, error=values["_error"])
        try:
            with ctx.engine.begin() as conn:
                offerings.update_offering(conn, ctx.provider, offering_id, body.model_dump(exclude={"offering_id"}))
        except ApiError as exc:
            if exc.status == 404:
                raise
            return _form(ctx, offering=o, values=values, status=exc.status, error=exc.message)
        return redirect(f"/provider/offerings/{offering_id}/edit?done=offering-saved")

    return await _page(request, view, post=True)


@router.get("/offerings/export.csv")
async def export_offerings(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        with ctx.engine.begin() as conn:
            text = offerings_csv.export_csv(conn, ctx.provider)
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{EXPORT_NAME}"'}
        return Response(text, media_type="text/csv; charset=utf-8", headers=headers)

    return await _page(request, view)


def _import_page(ctx: Ctx, status: int = 200, **values: Any) -> Response:
    values.setdefault("errors", [])
    values.setdefault("result", None)
    values.setdefault("text", "")
    return ctx.render("offerings_import.html", status, section="offerings", header=offerings_csv.HEADER,
                      max_rows=offerings_csv.MAX_ROWS, **values)


@router.get("/offerings/import")
async def import_page(request: Request) -> Response:
    return await _page(request, lambda ctx: _import_page(ctx))


@router.post("/offerings/import")
async def import_offerings(request: Request) -> Response:
    def view(ctx: Ctx) -> Response:
        upload = ctx.form.get("file") if ctx.form is not None else None
        data = upload.file.read() if upload is not None and not isinstance(upload, str) else b""
        pasted = ctx.field("text")
        try:
            text = data.decode("utf-8") if data else pasted
        except UnicodeDecodeError:
            return _import_page(ctx, 422, errors=["the file is not UTF-8 text: save it as CSV UTF-8"])
        if not text.strip():
            return _import_page(ctx, 422, errors=["choose a CSV file, or paste its text"])
        try:
            with ctx.engine.begin() as conn:
                result = offerings_csv.import_csv(conn, ctx.provider, text)
        except offerings_csv.CsvError as exc:
            return _import_page(ctx, 422, errors=exc.errors, text=pasted)
        except ApiError as exc:  # e.g. an offering id taken meanwhile: the transaction rolled back
            return _import_page(ctx, exc.status, errors=[exc.message], text=pasted)
        return _import_page(ctx, result=result)

    return await _page(request, view, post=True)
