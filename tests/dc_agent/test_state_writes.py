"""status.json: an unchanged status is not rewritten on every loop tick, a changed one is at once, and an
unchanged one again once REFRESH_SECONDS have passed (so `updatedNs` stays fresh for `dc-agent status`)."""

from __future__ import annotations

import json
from pathlib import Path

from dc_agent import state as state_module
from dc_agent.state import STATUS_FILE, AgentState


def _written(path: Path) -> tuple[int, int]:
    """(inode, updatedNs): atomic_write replaces the file, so a rewrite gives a new inode."""
    return path.stat().st_ino, json.loads(path.read_text())["updatedNs"]


def test_unchanged_status_is_not_rewritten_changed_one_is(tmp_path: Path) -> None:
    st = AgentState(state_dir=tmp_path)
    path = tmp_path / STATUS_FILE
    st.save(force=True)
    first = _written(path)
    st.save(force=True)
    assert _written(path) == first  # same content: the file was left alone
    st.count("polls")
    st.save(force=True)
    second = _written(path)
    assert second != first and json.loads(path.read_text())["counters"]["polls"] == 1


def test_unchanged_status_is_rewritten_after_the_refresh_interval(tmp_path: Path, monkeypatch) -> None:
    st = AgentState(state_dir=tmp_path)
    path = tmp_path / STATUS_FILE
    st.save(force=True)
    first = _written(path)
    monkeypatch.setattr(state_module, "REFRESH_SECONDS", 0.0)  # every save is past the refresh interval
    st.save(force=True)
    later = _written(path)
    assert later[1] > first[1]
