"""GET /install.sh: the agent installer, so that the one-liner on the "Add agent" page works as shown.

The file is systemd/install.sh of the dc-agent checkout this server runs from, or the one named by
`serve --installer-path`. The server only hands the file out; it never runs it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from pool_api.dependencies import SettingsDep
from pool_api.errors import ApiError

router = APIRouter(tags=["installer"])

CHECKOUT_INSTALLER = Path(__file__).resolve().parents[2] / "systemd" / "install.sh"


def installer_path(configured: str | None) -> Path:
    return Path(configured) if configured else CHECKOUT_INSTALLER


@router.get("/install.sh")
def install_script(settings: SettingsDep) -> Response:
    path = installer_path(settings.installer_path)
    try:
        body = path.read_bytes()
    except OSError:
        raise ApiError(404, f"installer not available on this server ({path} is missing): start "
                            "`dc-pool-api serve --installer-path PATH` with systemd/install.sh of dc-agent") from None
    return Response(body, media_type="text/x-shellscript; charset=utf-8",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
