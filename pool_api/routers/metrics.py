"""GET /metrics: Prometheus text exposition (pool_api.metrics). No signature: bind the server to
loopback, or let the reverse proxy in front of it refuse /metrics to anyone but the Prometheus server."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["metrics"], include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    try:
        body = await run_in_threadpool(generate_latest, registry)
    except sa.exc.SQLAlchemyError as exc:
        return Response(f"GET /metrics: database unavailable ({type(exc).__name__})\n", status_code=503,
                        media_type="text/plain; charset=utf-8")
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
