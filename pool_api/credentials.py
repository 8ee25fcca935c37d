"""The tenant's side of a password reset, for the admin CLI: an X25519 key file, and opening the sealed password.

The key file holds the private key as 64 hex characters, created with mode 0600 (never overwritten);
its public key goes with the reset request, and only the holder of the file can read the password
the agent sealed to it. PyNaCl is imported here only, so other commands start fast.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox


class CredentialError(Exception):
    """A key file or ciphertext problem; the message names the file and the fix (never a secret)."""


def load_or_create_key(path: Path) -> tuple[PrivateKey, bool]:
    """(key, created): the key in `path`, or a new one written there (0600) when the file does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_key(path), False
    except OSError as exc:
        raise CredentialError(f"--key-file {path}: cannot create it ({exc.strerror or exc})") from None
    key = PrivateKey.generate()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(bytes(key).hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key, True


def load_key(path: Path) -> PrivateKey:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"--key-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise CredentialError(f"--key-file {path}: not an X25519 private key (64 hex characters); "
                              "use the file `contract reset-password --key-file` wrote")
    return PrivateKey(raw)


def public_key_hex(key: PrivateKey) -> str:
    return bytes(key.public_key).hex()


def open_sealed(key: PrivateKey, encrypted_b64: str) -> str:
    """The password sealed to `key`'s public key (base64 SealedBox ciphertext)."""
    try:
        plain = SealedBox(key).decrypt(base64.b64decode(encrypted_b64, validate=True))
    except (CryptoError, binascii.Error, ValueError):
        raise CredentialError("the password cannot be opened with this key file (was the reset requested with "
                              "another --key-file?)") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError("the agent's sealed password is not UTF-8 text") from None
