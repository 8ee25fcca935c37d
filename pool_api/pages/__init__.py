"""Provider web pages (issue 6): pools, pool detail, add agent, offerings; sign-in by one-time link.

`app.include_router(pages.router)` mounts them under /provider.
"""

from pool_api.pages.routes import router

__all__ = ["router"]
