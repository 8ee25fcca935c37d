"""The pool page's chart: one stacked bar per hour of the last 24 h (provisioned below, failed on top) as
inline SVG built on the server. No script and no style attribute (the pages' CSP allows neither): the
colours come from classes in style.css, the hover text from SVG <title> elements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 520, 140
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 10, 22


def _hour_label(start_ns: int) -> str:
    return dt.datetime.fromtimestamp(start_ns / 1e9, tz=dt.timezone.utc).strftime("%H:%M")


def hourly_svg(hourly: Sequence[dict[str, Any]]) -> Markup:
    """`hourly`: provision_stats.pool_stats()["hourly"], oldest hour first."""
    n = max(1, len(hourly))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max([h["provisioned"] + h["failed"] for h in hourly] + [1])
    slot = plot_w / n
    bar = max(2.0, slot - 3)
    parts = [f'<svg class="chart" id="provision-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="Provisioned and failed per hour, last {n} hours">']
    base = TOP + plot_h
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}"/>')
    parts.append(f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text class="tick" x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>')
    for i, h in enumerate(hourly):
        x = LEFT + i * slot + (slot - bar) / 2
        ok_h = plot_h * h["provisioned"] / peak
        fail_h = plot_h * h["failed"] / peak
        label = escape(f"{_hour_label(h['startNs'])} UTC: {h['provisioned']} provisioned, {h['failed']} failed")
        parts.append(f'<g class="hour" data-provisioned="{h["provisioned"]}" data-failed="{h["failed"]}">'
                     f'<title>{label}</title>')
        parts.append(f'<rect class="slot" x="{x:.1f}" y="{TOP}" width="{bar:.1f}" height="{plot_h}"/>')
        if ok_h:
            parts.append(f'<rect class="ok" x="{x:.1f}" y="{base - ok_h:.1f}" width="{bar:.1f}" height="{ok_h:.1f}"/>')
        if fail_h:
            parts.append(f'<rect class="fail" x="{x:.1f}" y="{base - ok_h - fail_h:.1f}" width="{bar:.1f}" '
                         f'height="{fail_h:.1f}"/>')
        parts.append("</g>")
        if i % 6 == 0 or i == n - 1:
            parts.append(f'<text class="tick" x="{x + bar / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                         f'{escape(_hour_label(h["startNs"]))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
