"""A contract's history as the console shows it: its events (pool_api.contract_events) in order, each lock
with its renewals folded into one entry ("renewed 12 times until …") that also says how the lock ended.

A contract created before migration 0007 has no `created` event: what happened before its first event is
told from its current state instead (marked as such), since that is all pool_api kept then.
"""

from __future__ import annotations

from typing import Any

from dc_common.redact import redact_mapping
from pool_api.pages.format import utc

LOCK_ENDS = {"released": "released by the agent", "failed": "the attempt failed",
             "provisioned": "provisioned", "provider-released": "released by the provider",
             "cancelled": "the contract was cancelled", "terminated": "the contract was terminated"}
LABELS = {
    "created": "Created", "locked": "Locked", "released": "Released", "failed": "Failed",
    "provisioned": "Provisioned", "health": "Health", "paused": "Paused", "resumed": "Resumed",
    "cancelled": "Cancelled", "terminated": "Terminated",
    "password-reset-requested": "Password reset requested", "password-reset-done": "Password reset done",
    "password-reset-failed": "Password reset failed",
    "ssh-key-rotation-requested": "SSH key rotation requested", "ssh-key-rotation-done": "SSH key rotation done",
    "ssh-key-rotation-failed": "SSH key rotation failed",
    "provider-released": "Lock released by you", "provider-retry": "Retry requested by you",
}


def _entry(at: int, kind: str, summary: str = "", agent: str | None = None, details: Any = None,
           derived: bool = False) -> dict[str, Any]:
    return {"atNs": at, "kind": kind, "label": LABELS.get(kind, kind), "summary": summary, "agent": agent,
            "details": details, "derived": derived}


def _lock_summary(lock: dict[str, Any]) -> str:
    n = lock["renewals"]
    renewed = f"renewed {n} time{'s' if n != 1 else ''} until {utc(lock['until'])}" if n else \
        f"until {utc(lock['until'])}"
    return f"{renewed}; {lock['end']}" if lock["end"] else renewed


def _close(lock: dict[str, Any] | None, end: str) -> None:
    if lock is not None and not lock["end"]:
        lock["end"] = end
        lock["entry"]["summary"] = _lock_summary(lock)


def _event_summary(ev: dict[str, Any]) -> tuple[str, Any]:
    """(summary text, details to show as a table) of one non-lock event."""
    d, kind = ev["detail"], ev["kind"]
    if kind == "failed":
        return d.get("error") or "", None
    if kind == "provisioned":
        return "", d.get("instanceDetails")
    if kind == "health":
        return " ".join(x for x in (d.get("status"), d.get("detail")) if x), None
    if kind == "created":
        return f"status {d.get('status')}, payment {d.get('paymentStatus')}", None
    if kind == "provider-released":
        return f"the lock of agent {d.get('agent')}", None
    if kind == "provider-retry":
        return f"failure count {d.get('failureCount')} reset to 0", None
    if kind.endswith(("-requested", "-done", "-failed")):
        return " ".join(x for x in (d.get("requestId"), d.get("error")) if x), None
    return "", None


def build(contract: Any, events: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """The timeline entries of `contract` (a contracts row), oldest first."""
    out: list[dict[str, Any]] = []
    if not any(ev["kind"] == "created" for ev in events):
        first = events[0]["atNs"] if events else None
        out.extend(e for e in from_state(contract) if first is None or e["atNs"] < first)
    lock: dict[str, Any] | None = None
    for ev in events:
        kind, agent, at = ev["kind"], ev["agentPubkey"], ev["atNs"]
        if kind == "renewed" and lock is not None and lock["agent"] == agent and not lock["end"]:
            lock["renewals"] += 1
            lock["until"] = ev["detail"].get("expiresAtNs", lock["until"])
            lock["entry"]["summary"] = _lock_summary(lock)
            continue
        if kind in ("locked", "renewed"):
            if lock is not None:
                _close(lock, "expired" if at > lock["until"] else f"taken over by {agent}")
            entry = _entry(at, "locked", agent=agent)
            lock = {"agent": agent, "renewals": 0, "until": ev["detail"].get("expiresAtNs", at), "end": "",
                    "entry": entry}
            entry["summary"] = _lock_summary(lock)
            out.append(entry)
            continue
        if kind in LOCK_ENDS and lock is not None:
            # the holder may still report on its lapsed lock while nobody took it over; others end a live one
            lapsed = at > lock["until"] and agent != lock["agent"]
            _close(lock, "expired" if lapsed else LOCK_ENDS[kind])
            lock = None
        summary, details = _event_summary(ev)
        out.append(_entry(at, kind, summary, agent, details))
    if lock is not None:
        _close(lock, "held now" if now <= lock["until"] else "expired")
    return out


def from_state(r: Any) -> list[dict[str, Any]]:
    """What the contract row itself says happened (for contracts older than their event history)."""
    out = [_entry(r.created_at_ns, "created", f"status now {r.status}, payment {r.payment_status}", derived=True)]
    if r.first_locked_at_ns:
        out.append(_entry(r.first_locked_at_ns, "locked", "first lock", derived=True))
    if r.failure_count and r.last_failed_at_ns:
        out.append(_entry(r.last_failed_at_ns, "failed", f"{r.failure_count} failure(s) in all; the last: "
                          f"{r.last_error or ''}", r.last_failed_by, derived=True))
    if r.provisioned_at_ns:
        details = redact_mapping(r.instance_details) if isinstance(r.instance_details, dict) else None
        out.append(_entry(r.provisioned_at_ns, "provisioned", "", r.provisioned_by, details, derived=True))
    if r.health_checked_at_ns:
        text = " ".join(x for x in (r.health_status, r.health_detail) if x)
        out.append(_entry(r.health_checked_at_ns, "health", f"last report: {text}", r.health_agent, derived=True))
    for at, kind, agent in ((r.paused_at_ns, "paused", None), (r.resumed_at_ns, "resumed", None),
                            (r.cancelled_at_ns, "cancelled", None), (r.terminated_at_ns, "terminated", r.terminated_by)):
        if at:
            out.append(_entry(at, kind, "", agent, derived=True))
    return sorted(out, key=lambda e: e["atNs"])
