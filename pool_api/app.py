"""Build the FastAPI app: settings + engine on app.state, routers, error envelope, middleware, jobs.

Routers are included one line each; the provider web pages add theirs the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from fastapi import FastAPI

from pool_api import jobs, pages
from pool_api.claim_hub import ClaimHub
from pool_api.db import create_engine
from pool_api.dispatch_rules import rules_from
from pool_api.envelope import install_error_handlers
from pool_api.metrics import Metrics
from pool_api.middleware import AccessLog, BodyLimit, JsonByDefault
from pool_api.routers import agents, claim, health, installer, lifecycle, metrics, providers
from pool_api.settings import Settings


def create_app(settings: Settings, engine: sa.Engine | None = None, *, run_jobs: bool = True) -> FastAPI:
    engine = engine or create_engine(settings.database_url)
    hub = ClaimHub(engine, rules_from(settings), settings.claim_recheck_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = jobs.start(engine, settings) if run_jobs else []
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            engine.dispose()

    # No slash redirects: a 307 has no envelope, and following it would change the signed PATH.
    app = FastAPI(title="dc-agent pool_api", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.engine = engine
    app.state.claim_hub = hub  # waiting claims of this replica (pool_api.claim_hub)
    app.state.metrics = Metrics(engine, settings.online_window_ns, lambda: hub.waiting)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(installer.router)
    app.include_router(claim.router)
    app.include_router(agents.router)
    app.include_router(providers.router)
    app.include_router(lifecycle.router)
    app.include_router(pages.router)
    if settings.metrics:
        app.include_router(metrics.router)
    app.add_middleware(JsonByDefault)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AccessLog)
    return app
