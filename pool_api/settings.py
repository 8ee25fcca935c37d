"""Runtime settings of one `dc-pool-api serve` process (the CLI fills them from flags and env)."""

from __future__ import annotations

from dataclasses import dataclass

ENV_PREFIX = "DC_POOL_API_"
MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_SKEW_SECONDS = 300


@dataclass(frozen=True)
class Settings:
    database_url: str
    lock_ttl_seconds: int = 300
    lock_sweep_seconds: float = 60
    token_sweep_seconds: float = 3600
    heartbeat_seconds: int = 30
    public_url: str | None = None
    installer_path: str | None = None  # served as GET /install.sh (default: the checkout's systemd/install.sh)
    max_body_bytes: int = MAX_BODY_BYTES
    skew_seconds: int = SIGNATURE_SKEW_SECONDS
    # dispatch (pool_api.claims, pool_api.wakeups, pool_api.agent_health)
    advertise_claim: bool = True  # setup and heartbeat answers say `claim: true`
    claim_recheck_seconds: float = 2.0  # waiting claims re-check this often, whatever the notifications
    unhealthy_after_failures: int = 3  # consecutive failed provisions before an agent is passed over
    failure_cooldown_seconds: int = 600  # ... until its last failure is this old (then it gets a new chance)
    metrics: bool = True  # GET /metrics

    @property
    def online_window_ns(self) -> int:
        """An agent is online when its last heartbeat is younger than three heartbeat periods (min 90 s)."""
        return max(90, 3 * self.heartbeat_seconds) * 1_000_000_000

    @property
    def agent_stale_ns(self) -> int:
        """An agent without a heartbeat for three heartbeat periods is gone: another agent of its pool takes
        over the tenant requests (password reset, SSH key) of the contracts it provisioned."""
        return 3 * self.heartbeat_seconds * 1_000_000_000

    @property
    def nonce_retention_ns(self) -> int:
        """Nonces are kept while a request carrying them could still pass the skew check."""
        return (2 * self.skew_seconds + 60) * 1_000_000_000
