"""ApiError (what domain code raises) and the wording of validation errors; free of FastAPI so the CLI starts fast."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A refusal with its HTTP status and a human-readable message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """400 for a body that is not JSON at all, else 422 naming each bad field."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body: " + "; ".join(str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors)
    messages = []
    for e in errors[:10]:
        where = _loc(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing":
            msg = "field required"
        messages.append(f"{where}: {msg}")
    return 422, "invalid request: " + "; ".join(messages)
