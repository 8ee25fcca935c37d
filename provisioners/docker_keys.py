"""root's authorized_keys inside a container, as tar archives for Docker's put_archive / get_archive.

Writing through the archive API needs nothing in the image (no shell, no cp) and works on a container
that is created but not started, so the key is in place before sshd first runs.
"""

from __future__ import annotations

import base64
import binascii
import io
import tarfile
import time
from collections.abc import Iterable

from provisioners.base import ProvisionError

SSH_DIR = "root/.ssh"
AUTHORIZED_KEYS = f"/{SSH_DIR}/authorized_keys"
_MAX_KEYS_BYTES = 256 * 1024


def key_lines(text: str | None, what: str = "the SSH public key") -> list[str]:
    """The OpenSSH public key lines in `text` (one or more, blank lines and comments skipped).

    Raises ProvisionError for a line that is not `[options] type base64 [comment]`.
    """
    out: list[str] = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _identity(line) is None:
            raise ProvisionError(f"{what} is not an OpenSSH public key line "
                                 "(expected e.g. 'ssh-ed25519 AAAA… me@host')")
        out.append(line)
    return out


def _identity(line: str) -> tuple[str, str] | None:
    """(type, blob) of a key line, whatever its options and comment; None if it has none."""
    fields = line.split()
    for i, word in enumerate(fields[:-1]):
        if word.startswith(("ssh-", "ecdsa-", "sk-")):
            blob = fields[i + 1]
            try:
                base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                return None
            return word, blob
    return None


def merged(current: str, add: Iterable[str], remove: Iterable[str] = ()) -> str:
    """`current` with the keys in `remove` dropped and those in `add` appended once (by type and blob)."""
    drop = {_identity(k) for k in remove} - {None}
    kept: list[str] = []
    seen: set[tuple[str, str] | None] = set()
    for line in current.splitlines():
        ident = _identity(line.strip())
        if ident is not None and ident in drop:
            continue
        kept.append(line.rstrip())
        seen.add(ident)
    for key in add:
        ident = _identity(key)
        if ident not in seen and ident not in drop:
            kept.append(key)
            seen.add(ident)
    text = "\n".join(line for line in kept if line.strip())
    return text + "\n" if text else ""


def archive(content: str) -> bytes:
    """A tar (extracted at `/`) holding /root/.ssh (0700) and authorized_keys (0600), owned by root."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo(SSH_DIR)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o700, now
        tar.addfile(folder)
        data = content.encode()
        entry = tarfile.TarInfo(f"{SSH_DIR}/authorized_keys")
        entry.size, entry.mode, entry.mtime = len(data), 0o600, now
        tar.addfile(entry, io.BytesIO(data))
    return buf.getvalue()


def read_archive(chunks: Iterable[bytes]) -> str:
    """The text of the single file in a get_archive stream."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > _MAX_KEYS_BYTES + 64 * 1024:
            raise ProvisionError(f"{AUTHORIZED_KEYS} in the container is larger than {_MAX_KEYS_BYTES} bytes")
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r") as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                return handle.read().decode("utf-8", "replace") if handle else ""
    return ""
