"""Opt-in Prometheus metrics of one agent (`[agent] metrics_listen = "127.0.0.1:9464"`).

The figures are read at scrape time from what the agent already keeps (:class:`dc_agent.state.AgentState`
counters, its jobs and outbox), so nothing is counted twice; only provisioning durations are observed into
a histogram as jobs finish. prometheus-client is imported only when metrics are on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dc_agent.loop import Agent

DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
COUNTER_HELP = {
    "locks_acquired": "contracts locked (claimed or polled) by this agent",
    "lock_conflicts": "lock attempts that found another agent holding the contract",
    "provisioned": "provisioned reports acknowledged by the server",
    "failed": "failure reports acknowledged by the server",
    "adopted": "instances adopted after a restart instead of provisioned again",
    "lost_leases": "contracts given up because the lease was refused or ran out",
    "renewals": "lease renewals",
    "renewal_errors": "lease renewals that failed on the network",
    "heartbeats": "heartbeats acknowledged",
    "heartbeat_errors": "heartbeats that failed",
    "polls": "polls or claims answered",
    "poll_errors": "polls or claims that failed",
    "report_errors": "result reports that failed and stay in the outbox",
    "terminated": "instances removed by reconcile",
    "health_reports": "instance health reports sent",
    "actions_done": "password resets and key rotations done and reported",
    "action_errors": "password resets and key rotations that failed",
}


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:9464' -> ('127.0.0.1', 9464); '[::1]:9464' for IPv6."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


class AgentMetrics:
    """The agent's /metrics: a collector over its state plus a duration histogram."""

    def __init__(self, agent: "Agent") -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=True)
        self.durations = Histogram("dc_agent_provisioning_seconds", "time from lock to a reported result",
                                   ["result"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(self)
        self._server: Any = None

    def observe(self, result: str, seconds: float) -> None:
        self.durations.labels(result=result).observe(seconds)

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        a = self.agent
        counters = a.state.counters
        for name, help_text in COUNTER_HELP.items():
            family = CounterMetricFamily(f"dc_agent_{name}", help_text)
            family.add_metric([], float(counters.get(name, 0)))
            yield family
        gauges = {
            "dc_agent_jobs_running": ("contracts being provisioned now", len(a.jobs)),
            "dc_agent_slots_free": ("free provisioning slots", max(0, a.free_slots)),
            "dc_agent_outbox_backlog": ("results waiting for the server's acknowledgement", len(a.outbox)),
            "dc_agent_instances": ("instances this agent looks after", len(a.registry)),
            "dc_agent_api_up": ("1 when the last heartbeat succeeded", 1.0 if a.heartbeat_ok else 0.0),
            "dc_agent_draining": ("1 while a stop drains running contracts", 1.0 if a.stopping else 0.0),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=float(value))
        if a.state.last_heartbeat_ns:
            yield GaugeMetricFamily("dc_agent_last_heartbeat_age_seconds", "seconds since the last heartbeat",
                                    value=max(0.0, (time.time_ns() - a.state.last_heartbeat_ns) / 1e9))

    def describe(self) -> list[Any]:
        return []

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint in a daemon thread; the address it listens on."""
        from prometheus_client import start_http_server

        host, port = parse_listen(listen)
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return host, int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
