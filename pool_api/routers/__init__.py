"""HTTP routers; `pool_api.app.create_app` includes them (a `pages` router can be added the same way)."""
