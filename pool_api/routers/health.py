"""GET /api/v1/health: 200 once the process serves and its database answers."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from pool_api.dependencies import EngineDep
from pool_api.envelope import ok
from pool_api.errors import ApiError

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health")
def health(engine: EngineDep):
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        raise ApiError(503, f"database unavailable: {type(exc).__name__}") from None
    return ok({"status": "ok", "database": engine.dialect.name})
