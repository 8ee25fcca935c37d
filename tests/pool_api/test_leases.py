"""Lock lifetime with a short TTL: renewal extends it, expiry lets another agent take over (the old
holder is then refused), and the background jobs clear expired locks and expired tokens."""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa

from pool_api.tables import agent_setup_tokens
from tests.pool_api.helpers import contract, error, make_contracts, new_agent, quick_provider, wait_for
from tests.support.provider import data

TTL = 3


class TestLeases:
    def test_renewal_expiry_and_takeover(self, fresh_server) -> None:
        """The holder's re-lock extends the lease past the first expiry; once it lapses, another agent takes
        the contract and the old holder's re-lock (409), provisioned (403) and failed (403) are refused."""
        server = fresh_server(lock_ttl_seconds=TTL, lock_sweep_seconds=60)
        provider = quick_provider(server)
        pool = provider.create_pool("lease", "europe", "proxmox")
        provider.create_offering("lease", "DE")
        a, b = new_agent(provider, pool["poolId"]), new_agent(provider, pool["poolId"])
        [cid] = make_contracts(provider.server, "lease")
        first = data(a.lock(cid))
        assert first["expiresAtNs"] - first["lockedAtNs"] == TTL * 10**9
        expiries = [first["expiresAtNs"]]
        while time.time_ns() < first["expiresAtNs"] + 10**9:  # renew for a second beyond the first expiry
            error(b.lock(cid), 409)
            expiries.append(data(a.lock(cid))["expiresAtNs"])
            time.sleep(0.3)
        assert expiries == sorted(expiries) and expiries[-1] > first["expiresAtNs"] + 10**9
        print(f"[lease] holder renewed {len(expiries) - 1} times; the other agent got 409 each time")
        taken = wait_for(lambda: b.lock(cid).status_code == 200)
        assert taken
        assert "another agent" in error(a.lock(cid), 409)
        assert "lock holder" in error(a.provisioned(cid), 403)
        assert "lock holder" in error(a.failed(cid), 403)
        assert "lock holder" in error(a.unlock(cid), 403)
        assert data(b.provisioned(cid))["status"] == "provisioned"
        for agent in (a, b):
            agent.close()

    def test_sweep_clears_expired_locks(self, fresh_server) -> None:
        """The lock sweep clears an expired lock; the lapsed holder must lock again before reporting."""
        server = fresh_server(lock_ttl_seconds=1, lock_sweep_seconds=0.3)
        provider = quick_provider(server)
        pool = provider.create_pool("sweep", "europe", "proxmox")
        provider.create_offering("sweep", "DE")
        a = new_agent(provider, pool["poolId"])
        [cid] = make_contracts(provider.server, "sweep")
        data(a.lock(cid))
        wait_for(lambda: contract(server, cid)["lockAgent"] is None)
        assert "lock is free" in error(a.provisioned(cid), 403)
        data(a.lock(cid))
        data(a.provisioned(cid))
        a.close()

    def test_sweep_deletes_expired_tokens(self, fresh_server) -> None:
        """The token sweep deletes expired unused tokens and keeps live ones."""
        server = fresh_server(token_sweep_seconds=0.3)
        provider = quick_provider(server)
        pool = provider.create_pool("tokens", "europe", "proxmox")
        live = provider.create_token(pool["poolId"], label="live")
        engine = sa.create_engine(server.database_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.insert(agent_setup_tokens).values(
                    token_hash=uuid.uuid4().hex * 2, token_prefix="apt_europe_dead…", pool_id=pool["poolId"],
                    label="expired", created_at_ns=1, expires_at_ns=2))

            def labels() -> set[str]:
                with engine.connect() as conn:
                    return set(conn.execute(sa.select(agent_setup_tokens.c.label)).scalars())
            wait_for(lambda: labels() == {"live"})
        finally:
            engine.dispose()
        assert live
