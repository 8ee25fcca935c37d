"""Checks the drivers' config parsers share: one error shape (`[table] key: problem; fix`) and the
positive-seconds check that every timeout setting uses."""

from __future__ import annotations

from typing import Any

from provisioners.base import ConfigError


def config_error(section: str, key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{section} {key}: {problem}; {fix}")


def positive_seconds(section: str, settings: dict[str, Any], key: str, default: float) -> float:
    """`settings[key]` (or `default`) as seconds > 0; a bool, a string or a non-positive number is refused."""
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise config_error(section, key, f"must be a positive number of seconds, not {value!r}",
                           f"e.g. {key} = {default:g}")
    return float(value)
