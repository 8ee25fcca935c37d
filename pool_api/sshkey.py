"""The shape of an OpenSSH public key line (`<type> <base64 blob> [comment]`), checked before a rotation.

The blob must be valid base64 and start with its own key type (the SSH wire encoding: a 4-byte length,
then the type name), which catches truncated or pasted-together keys. Options (`from="…"`) and several
keys in one line are refused: a rotation installs exactly one key.
"""

from __future__ import annotations

import base64
import binascii
import struct

KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
MAX_LINE = 16 * 1024


def key_line_problem(line: str) -> str | None:
    """Why `line` is not one OpenSSH public key line, or None when it is one."""
    if not isinstance(line, str) or not line.strip():
        return "is empty"
    if len(line) > MAX_LINE:
        return f"is longer than {MAX_LINE} characters"
    if any(ch in line for ch in "\r\n\x00"):
        return "must be a single line (one key)"
    if any(ord(ch) < 32 and ch != "\t" for ch in line):
        return "contains control characters"
    parts = line.split(None, 2)
    if len(parts) < 2:
        return "must be '<type> <base64 key> [comment]', e.g. 'ssh-ed25519 AAAAC3Nza… user@host'"
    key_type, blob = parts[0], parts[1]
    if key_type not in KEY_TYPES:
        return f"key type {key_type[:40]!r} is not one of {', '.join(KEY_TYPES)}"
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "the key is not valid base64"
    if len(raw) < 4:
        return "the key is too short"
    (length,) = struct.unpack(">I", raw[:4])
    if raw[4:4 + length] != key_type.encode():
        return f"the key's data does not start with its type {key_type!r} (truncated or mixed-up key?)"
    return None


def normalize_key_line(line: str) -> str:
    """The line with surrounding blanks removed and inner runs of blanks as one space."""
    return " ".join(line.split())
