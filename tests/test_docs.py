"""The README and docs/ are complete in a fresh clone: every relative link points at a file of the repository,
and nothing sends the reader outside it (to ../shared)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(doc: Path):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or REPO not in path.parents and path != REPO:
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_outside_the_repository(doc: Path):
    assert "../shared" not in doc.read_text()


def test_the_three_docs_exist():
    assert {p.name for p in DOCS} >= {"README.md", "protocol.md", "operations.md", "architecture.md"}
