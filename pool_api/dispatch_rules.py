"""The knobs of dispatch in one value: what counts as online, unhealthy and sticky.

Built from the serve settings (`rules_from`); the defaults equal the serve defaults, so code that has no
settings at hand (admin commands, tests of one function) judges the same way a default server does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pool_api.settings import Settings

NS = 1_000_000_000


@dataclass(frozen=True)
class DispatchRules:
    online_window_ns: int = 90 * NS  # Settings.online_window_ns at the default 30 s heartbeat
    unhealthy_after_failures: int = 3
    failure_cooldown_ns: int = 600 * NS
    lock_ttl_ns: int = 300 * NS  # a contract stays sticky for one TTL after its lock expired


def rules_from(settings: Settings) -> DispatchRules:
    """The rules of a running server."""
    return DispatchRules(online_window_ns=settings.online_window_ns,
                         unhealthy_after_failures=settings.unhealthy_after_failures,
                         failure_cooldown_ns=int(settings.failure_cooldown_seconds * NS),
                         lock_ttl_ns=int(settings.lock_ttl_seconds * NS))
