"""Small display helpers for the templates (registered as Jinja2 filters)."""

from __future__ import annotations

import time

NS = 1_000_000_000


def ago(ns: int | None, now_ns: int) -> str:
    """`30s ago`, `5m ago`, `2h ago`, `3d ago`; `never` for no timestamp."""
    if ns is None:
        return "never"
    seconds = (now_ns - ns) // NS
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def remaining(ns: int, now_ns: int) -> str:
    """Time until `ns`: `23h 55m`, `42m`, `3d 4h`; `expired` when past."""
    seconds = (ns - now_ns) // NS
    if seconds <= 0:
        return "expired"
    minutes = seconds // 60
    if minutes < 60:
        return f"{max(minutes, 1)}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def short_key(key: str | None) -> str:
    """`1a2b3c4d…9f0e` for a 64-hex key."""
    if not key:
        return ""
    return key if len(key) <= 14 else f"{key[:8]}…{key[-4:]}"


def size_mb(mb: int | None) -> str:
    if mb is None:
        return "—"
    if mb >= 1024 and mb % 1024 == 0:
        return f"{mb // 1024} GB"
    return f"{mb} MB"


def price(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def percent(rate: float | None) -> str:
    """`97.5 %` for 0.975; `—` when there is nothing to rate."""
    return "—" if rate is None else f"{rate * 100:.1f} %"


def duration_ms(ms: float | None) -> str:
    """`850 ms`, `12.3 s`, `4m 05s`; `—` for none."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest:02d}s"


def utc(ns: int | None) -> str:
    """`2026-12-05 12:00:03 UTC` for a time in ns since the epoch; `—` for none."""
    if ns is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns // NS))
