"""`dc-agent import-config`: take over a Rust dc-agent 0.6's config and key (switching from the Rust agent).

Reads the Rust `dc-agent.toml` and the agent key it names, maps them with :mod:`dc_agent.rust_config`,
checks that the result loads (`config.load`) and that its driver builds (`provisioners.load`), and only
then writes our key (32-byte seed as hex, 0600) and config (0600), both atomically, the key first under
a temporary name so that a failure leaves neither half. Every Rust key it cannot map is printed with why.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from dc_agent.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail
from dc_agent.errors import ConfigFileError

COMMAND = "import-config"


class _Refused(Exception):
    """Bad input: one line for the user, exit status 78."""


def _read_rust_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Refused(f"{path}: no such file; give the Rust agent's config (its default is "
                       "/etc/dc-agent/dc-agent.toml)") from None
    except PermissionError:
        raise _Refused(f"{path}: permission denied; run as the Rust agent's user (root)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Refused(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _Refused(f"{path}: not valid TOML ({exc})") from None


def _seed(secret: str, key_flag: Path | None, source: Path) -> tuple[bytes, str]:
    """The agent's seed and where it came from: --key, else [api] agent_secret_key (inline or a file)."""
    from dc_agent.rust_config import is_inline_key, seed_from_text

    if key_flag is None and is_inline_key(secret):
        return seed_from_text(secret), f"{source}: [api] agent_secret_key (inline)"
    path = key_flag or Path(secret).expanduser()
    if not path.is_absolute():  # as the Rust service saw it: its systemd unit runs from /
        path = Path("/") / path
    where = "--key" if key_flag else f"{source}: [api] agent_secret_key"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _Refused(f"{path} ({where}): no such key file; pass the Rust agent's key with --key PATH "
                       "(its setup writes ~/.dc-agent/agent.key of the user it ran as, e.g. /root)") from None
    except PermissionError:
        raise _Refused(f"{path} ({where}): permission denied reading the key; run as its owner (root)") from None
    except UnicodeDecodeError:
        raise _Refused(f"{path} ({where}): not an agent key: it is binary; the Rust agent reads a 32-byte "
                       "Ed25519 seed as 64 hex characters") from None
    except OSError as exc:
        raise _Refused(f"{path} ({where}): cannot read it ({exc.strerror or exc})") from None
    try:
        return seed_from_text(text), str(path)
    except ValueError as exc:
        raise _Refused(f"{path} ({where}): not an agent key: {exc}") from None


def _document(translation: Any, key_path: Path, state_dir: Path) -> dict[str, Any]:
    """Our config file as a dict, in the layout `config.render` writes and `config.load` reads."""
    from dc_agent.config import AGENT_OPTIONS

    agent = {k: v for k, v in translation.agent.items() if k in AGENT_OPTIONS}
    agent.setdefault("poll_interval_seconds", 30)
    for key, default in (("lock_timeout_seconds", 300), ("max_concurrent", 2), ("shutdown_grace_seconds", 60)):
        agent.setdefault(key, default)
    agent["state_dir"] = str(state_dir)
    return {
        "agent": agent,
        "keys": {"private_key_path": str(key_path)},
        "provisioner": {"type": translation.provisioner_type,
                        translation.provisioner_type: dict(translation.provisioner)},
        **({"provisioners": {name: dict(table) for name, table in translation.extra_provisioners.items()}}
           if translation.extra_provisioners else {}),
    }


def _check(text: str, config_path: Path) -> None:
    """The file to be written must load (`config.load`) and build its driver (`provisioners.load`)."""
    from dc_agent import config as cfg
    from provisioners import load as load_driver
    from provisioners.base import ConfigError

    with tempfile.TemporaryDirectory(prefix="dc-agent-import-") as tmp:
        probe = Path(tmp) / "config.toml"
        probe.write_text(text)
        try:
            settings = cfg.load(probe, environ={})
            load_driver(settings.provisioner_type, dict(settings.provisioner_settings), config_path=config_path)
            for extra in settings.extra_provisioners:
                load_driver(extra.type, dict(extra.settings), config_path=config_path)
        except (ConfigFileError, ConfigError) as exc:
            raise _Refused(f"the imported config would not load: {str(exc).replace(str(probe), str(config_path))}; "
                           "fix that value in the Rust file and import again") from None


def _render(doc: dict[str, Any], source: Path) -> str:
    import tomli_w

    header = (f"# dc-agent configuration, imported by `dc-agent import-config` from {source}.\n"
              "# See the README's configuration reference and \"Switching from the Rust dc-agent\".\n\n")
    return header + tomli_w.dumps(doc)


def _print_mapping(translation: Any) -> None:
    for rust_key, ours in translation.mapped:
        print(f"  mapped        {rust_key} -> {ours}")
    for item in translation.unmapped:
        print(f"  not imported  {item.key}: {item.why}")
    for note in translation.notes:
        print(f"  note          {note}")


def run_import(*, source: Path, key: Path | None, config: Path | None, force: bool, dry_run: bool,
               public_ip: str | None = None) -> int:
    from dc_agent import config as cfg
    from dc_agent import keys
    from dc_common.fsutil import atomic_write, ensure_dir
    from dc_common.redact import redact_mapping
    from dc_agent.rust_config import RustConfigError, translate

    source = source.expanduser().absolute()
    config_path = cfg.resolve_config_path(config).absolute()
    key_path = cfg.default_key_path(config_path)
    try:
        if config_path == source or (config_path.exists() and source.exists() and config_path.samefile(source)):
            raise _Refused(f"--config {config_path} is the Rust config itself; write ours elsewhere "
                           "(default /etc/dc-agent/config.toml) so that the Rust agent's stays for a rollback")
        try:
            translation = translate(_read_rust_config(source), public_ip=public_ip)
        except RustConfigError as exc:
            raise _Refused(f"{source}: {exc}") from None
        seed, seed_from = _seed(translation.secret_key, key, source)
        doc = _document(translation, key_path, cfg.default_state_dir(config_path).absolute())
        text = _render(doc, source)
        _check(text, config_path)
    except _Refused as exc:
        fail(COMMAND, str(exc))
        return EXIT_CONFIG

    from nacl.signing import SigningKey

    signing_key = SigningKey(seed)
    for existing, what in ((config_path, "a config"), (key_path, "an agent key")):
        if existing.exists() and not force and not dry_run:
            fail(COMMAND, f"{existing} already holds {what}; use --force to replace it, or --config PATH "
                          "to write elsewhere")
            return EXIT_FAILURE
    print(f"Importing {source} (agent key {keys.public_hex(signing_key)[:16]}… from {seed_from}):")
    _print_mapping(translation)
    if dry_run:
        print(f"\nWould write {config_path} (0600) and {key_path} (0600); nothing written (--dry-run):\n")
        print(_render(redact_mapping(doc), source), end="")
        return EXIT_OK
    pending = key_path.with_name(f".{key_path.name}.new")
    try:
        ensure_dir(config_path.parent)
        keys.write(pending, signing_key)
        atomic_write(config_path, text.encode(), mode=0o600)
        os.replace(pending, key_path)
    except OSError as exc:
        pending.unlink(missing_ok=True)
        fail(COMMAND, f"cannot write {config_path} or {key_path}: {exc.strerror or exc}; run as root or pass "
                      "--config PATH")
        return EXIT_FAILURE
    print(f"\nWrote {config_path} (0600) and {key_path} (0600).")
    print("Next: stop the Rust agent for good, then start this one (README: \"Switching from the Rust dc-agent\"); "
          "`dc-agent status` checks the result.")
    return EXIT_OK
