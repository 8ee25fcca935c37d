"""GET /install.sh: the one-liner of the "Add agent" page fetches the real installer from pool_api."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient

from pool_api import db
from pool_api.app import create_app
from pool_api.settings import Settings

REPO_INSTALLER = Path(__file__).resolve().parents[2] / "systemd" / "install.sh"


def client_for(sqlite_url: str, **settings: object) -> TestClient:
    url = db.normalize_url(sqlite_url)
    engine = sa.create_engine(url)
    db.migrate(engine)
    return TestClient(create_app(Settings(database_url=url, **settings), engine, run_jobs=False))


class TestInstallScript:
    def test_serves_the_checkout_installer_byte_for_byte(self, sqlite_url: str) -> None:
        """Without --installer-path the server hands out systemd/install.sh of its checkout, unchanged."""
        with client_for(sqlite_url) as client:
            res = client.get("/install.sh")
        assert res.status_code == 200
        assert res.content == REPO_INSTALLER.read_bytes()
        assert res.headers["content-type"].startswith("text/x-shellscript")

    def test_configured_path_wins(self, sqlite_url: str, tmp_path: Path) -> None:
        """--installer-path names the file served."""
        custom = tmp_path / "install.sh"
        custom.write_text("#!/bin/sh\necho custom installer\n")
        with client_for(sqlite_url, installer_path=str(custom)) as client:
            assert client.get("/install.sh").text == custom.read_text()

    def test_missing_installer_is_a_404_that_says_what_to_do(self, sqlite_url: str, tmp_path: Path) -> None:
        """A server without the file answers 404 in the envelope, naming the option to set."""
        with client_for(sqlite_url, installer_path=str(tmp_path / "absent.sh")) as client:
            res = client.get("/install.sh")
        assert res.status_code == 404
        body = res.json()
        assert body["success"] is False and "--installer-path" in body["error"]
