"""The agent's Ed25519 identity: a 32-byte seed kept as hex in a file only its owner can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from dc_agent.errors import ConfigFileError
from dc_common.fsutil import atomic_write


def generate() -> SigningKey:
    return SigningKey.generate()


def public_hex(key: SigningKey) -> str:
    return key.verify_key.encode().hex()


def write(path: Path, key: SigningKey) -> None:
    """Write the seed durably with mode 0600 (created private, never briefly readable by others)."""
    atomic_write(path, key.encode().hex().encode() + b"\n", mode=0o600)


def load(path: Path) -> SigningKey:
    """Read the key; errors name the file and the fix."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: the agent key is missing ([keys] private_key_path); "
                              "restore it from a backup or register again with `dc-agent setup --force`") from None
    except PermissionError:
        raise ConfigFileError(f"{path}: permission denied reading the agent key; run as its owner") from None
    try:
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError
    except ValueError:
        raise ConfigFileError(f"{path}: not an agent key (expected 64 hex characters); "
                              "register again with `dc-agent setup --force`") from None
    return SigningKey(seed)


def loose_permissions(path: Path) -> str | None:
    """A warning when the key file can be read by others than its owner, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
    return None
