"""`dc-agent setup`: key first (0600, on disk before registering), then the token, then the config.

Nothing is left behind on failure: the new key is written to a temporary file next to its final
place and only renamed into place once the server accepted it; the config is written last,
atomically, 0600.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from dc_agent.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail
from dc_agent.errors import ApiError, BadRequest, ConfigFileError, Forbidden, Gone, NotFound, ServerError, \
    Unauthorized, Unreachable


def _explain(exc: ApiError, api_url: str) -> str:
    if isinstance(exc, Gone):
        return ("this setup token was already used or has expired; create a new one (pool page, 'Add agent') "
                f"and run setup again [{exc}]")
    if isinstance(exc, (NotFound, Unauthorized)):
        return f"the API does not know this setup token; check that you copied it whole [{exc}]"
    if isinstance(exc, BadRequest):
        return f"the API refused the setup request; check the token [{exc}]"
    if isinstance(exc, Forbidden):
        return f"the API refused this token (is the pool or provider still active?) [{exc}]"
    if isinstance(exc, Unreachable):
        return (f"cannot reach the API at {api_url}; check --api-url, DNS, the network and the firewall "
                f"[{exc.detail}]")
    if isinstance(exc, ServerError):
        return f"the API failed; try again in a minute [{exc}]"
    return str(exc)


def detect_dialect(info: dict[str, object]) -> str:
    """pool_api says `apiDialect` in its setup answer; the live Decent Cloud API sends no such field."""
    said = info.get("apiDialect")
    return str(said) if said in ("pool-api", "decent-cloud") else "decent-cloud"


def run_setup(*, token: str, api_url: str, config: Path | None, label: str | None, force: bool,
              state_dir: Path | None, ca_cert: Path | None, api_dialect: str | None = None) -> int:
    from dc_agent import config as cfg
    from dc_agent import keys
    from dc_agent.api.http import register
    from dc_common.fsutil import atomic_write, ensure_dir

    config_path = cfg.resolve_config_path(config).absolute()
    key_path = cfg.default_key_path(config_path)
    state = (state_dir.expanduser().absolute() if state_dir else cfg.default_state_dir(config_path).absolute())
    token = token.strip()
    if not token:
        fail("setup", "--token is empty; paste the token from the pool's 'Add agent' dialog")
        return EXIT_FAILURE
    if api_dialect is not None and api_dialect not in cfg.API_DIALECTS:
        fail("setup", f"--api-dialect {api_dialect!r}: use one of {', '.join(cfg.API_DIALECTS)}")
        return EXIT_FAILURE
    try:
        api_url = cfg._url(api_url)
    except ValueError as exc:
        fail("setup", f"--api-url {api_url!r}: {exc}")
        return EXIT_FAILURE
    for existing, what in ((config_path, "a config"), (key_path, "an agent key")):
        if existing.exists() and not force:
            fail("setup", f"{existing} already holds {what}: this machine is already set up. "
                          "Use --force to replace it with a new identity, or --config PATH for a second agent")
            return EXIT_FAILURE

    created_dirs = [d for d in (config_path.parent, *config_path.parent.parents) if not d.exists()]
    key = keys.generate()
    pubkey = keys.public_hex(key)
    try:
        ensure_dir(config_path.parent)
    except OSError as exc:
        fail("setup", f"cannot create {config_path.parent}: {exc.strerror}; run as root or pass --config PATH")
        return EXIT_FAILURE
    pending_key = key_path.with_name(f".{key_path.name}.new")

    def clean_up() -> None:
        pending_key.unlink(missing_ok=True)
        for d in created_dirs:  # deepest first; only directories we made and that are empty
            try:
                d.rmdir()
            except OSError:
                break

    try:
        keys.write(pending_key, key)  # durable and 0600 before the server ever hears of this key
        info = register(api_url, token, pubkey, ca_cert=str(ca_cert) if ca_cert else None)
    except ApiError as exc:
        clean_up()
        fail("setup", _explain(exc, api_url))
        return EXIT_FAILURE
    except ConfigFileError as exc:
        clean_up()
        fail("setup", str(exc))
        return EXIT_CONFIG
    except OSError as exc:
        clean_up()
        fail("setup", f"cannot write the key next to {config_path}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except BaseException:
        clean_up()
        raise

    provider = str(info.get("providerPubkey") or "").lower()
    pool_id = str(info.get("poolId") or "")
    kind = str(info.get("provisionerType") or "script")
    dialect = api_dialect or detect_dialect(info)
    try:
        cfg._hex_key(provider)
    except ValueError:
        clean_up()
        fail("setup", f"POST /agents/setup answered without a valid providerPubkey ({provider[:80]!r}); "
                      "is --api-url the marketplace API? The token may be used up now: create a new one")
        return EXIT_FAILURE
    try:
        text = cfg.render(api_url=api_url, provider_pubkey=provider, pool_id=pool_id,
                          pool_name=info.get("poolName"), label=label or socket.gethostname(),
                          private_key_path=key_path, state_dir=state, provisioner_type=kind,
                          ca_cert=str(ca_cert.absolute()) if ca_cert else None, api_dialect=dialect)
        os.replace(pending_key, key_path)
        atomic_write(config_path, text.encode(), mode=0o600)
    except OSError as exc:
        clean_up()
        fail("setup", f"registered, but cannot write {config_path}: {exc.strerror or exc}; "
                      f"free space or fix permissions, then run setup with a new token")
        return EXIT_FAILURE

    print(f"Registered agent {pubkey[:16]}… in pool {info.get('poolName') or pool_id} "
          f"({info.get('poolLocation') or '?'}) of provider {provider[:16]}…, speaking the {dialect} API.")
    print(f"  config: {config_path} (0600)\n  key:    {key_path} (0600)\n  state:  {state}")
    print("Next steps:")
    print(f"  1. Configure the {kind} provisioner: edit [provisioner.{kind}] in {config_path}"
          + (" (see README, Configuration)." if kind != "manual" else " (nothing to set for manual)."))
    print(f"  2. Check it:  dc-agent status --config {config_path}")
    if os.geteuid() == 0 and config_path == Path("/etc/dc-agent/config.toml"):
        print("  3. Start it:  systemctl enable --now dc-agent")
    else:
        print(f"  3. Start it:  dc-agent run --config {config_path}")
    return EXIT_OK

