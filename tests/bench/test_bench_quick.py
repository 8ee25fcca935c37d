"""Each benchmark's --quick mode runs to the end and prints its figure lines (so the scripts do not rot).

Real processes (PostgreSQL, `dc-pool-api serve`, `dc-agent run`), small sizes. The test checks the exit
status, the `FIGURE name = value` lines and the section written to a scratch RESULTS.md; it never checks
a timing: benchmarks print, they do not assert.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import SUMMARY_ROWS

REPO = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"^FIGURE (\S+) = (\S+)", re.M)

SCRIPTS = {
    "makespan": ({"makespan_mc1", "ideal_mc1", "makespan_ratio_mc1", "conflicts_per_contract_mc1",
                  "makespan_ratio_mc2"}, "1–2. Makespan and 409s per contract"),
    "pickup": ({"pickup_p50", "pickup_p95", "poll_interval", "agents"}, "3. Pickup latency"),
    "pending_query": ({"pending_p50", "pending_p95", "pending_sql_execution", "indexes_used"},
                      "4. pending-provision latency"),
    "footprint": ({"idle_rss", "idle_cpu_seconds", "help_median", "python_pass_median", "help_ratio"},
                  "5. Agent footprint"),
    "exactly_once": ({"double_provisions", "lost_contracts", "provisioned_without_instance", "kills"},
                     "6. Exactly-once under faults"),
    "request_cost": ({"server_cpu[claim-hit]", "server_cpu[provisioned]", "claim_contract_floor",
                      "poll_contract_floor"}, "Server CPU per request"),
    "idle_fleet": ({"server_cpu_share", "server_rss", "pickup_p50", "waiting_claims", "errors"},
                   "Idle fleet: 1,000 long-polling agents on one replica"),
    "profile_cycle": ({"samples_server", "samples_agents", "top_self_server"}, "Profile of one cycle (py-spy)"),
}
NEEDS = {"profile_cycle": "py-spy"}  # an optional tool: the test is skipped where it is not installed

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_quick_mode_runs_and_prints_its_figures(name: str, tmp_path: Path) -> None:
    tool = NEEDS.get(name)
    if tool and not (Path(sys.executable).parent / tool).exists() and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install {tool})")
    results = tmp_path / "RESULTS.md"
    res = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", "--results", str(results)],
                         capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    figures = dict(FIGURE.findall(res.stdout))
    wanted, title = SCRIPTS[name]
    assert wanted <= set(figures), f"missing figure lines {sorted(wanted - set(figures))}:\n{res.stdout[-3000:]}"
    assert all(value not in ("nan", "?") for key, value in figures.items() if key in wanted), figures
    text = results.read_text()
    assert f"## {title}" in text and "- Command: `python bench/" in text
    assert text.rstrip().splitlines()[-1].startswith("| Lost contracts"), "the summary table must close the file"
    table = text.split("## Summary", 1)[1]
    assert table.count("\n| ") == len(SUMMARY_ROWS) + 1  # header + one row per summary figure
