"""The agent's configuration: where it lives, how it is read and validated, and how setup writes it.

Layout (SPEC.md, "Config File Structure")::

    [agent]
    api_url = "https://api.example"
    provider_pubkey = "<hex>"
    pool_id = "<pool id>"
    poll_interval_seconds = 30
    lock_timeout_seconds = 300
    max_concurrent = 2
    ...
    [keys]
    private_key_path = "/etc/dc-agent/agent.key"
    [provisioner]
    type = "script"
    [provisioner.script]
    command = ["/usr/local/bin/provision-vm"]

Precedence: command-line flags > environment (`DC_AGENT_<KEY>`) > file > defaults.
Every error names the file (or variable), the key, and what to do.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dc_agent.errors import ConfigFileError

ENV_PREFIX = "DC_AGENT_"


def is_root() -> bool:
    return os.geteuid() == 0


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_config_path() -> Path:
    """`/etc/dc-agent/config.toml` as root (or systemd's $CONFIGURATION_DIRECTORY), else the XDG config dir."""
    if os.environ.get("CONFIGURATION_DIRECTORY"):
        return Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / "config.toml"
    if is_root():
        return Path("/etc/dc-agent/config.toml")
    return _xdg("XDG_CONFIG_HOME", ".config") / "dc-agent" / "config.toml"


def default_key_path(config_path: Path) -> Path:
    """The key lives next to its config (`/etc/dc-agent/agent.key` as root)."""
    return config_path.parent / "agent.key"


def default_state_dir(config_path: Path) -> Path:
    """`/var/lib/dc-agent` as root (or $STATE_DIRECTORY), else the XDG state dir.

    A config outside the default place gets `<its directory>/state`, so that two agents set up with
    `--config` on one machine never share an outbox.
    """
    if config_path.expanduser().absolute() != default_config_path().absolute():
        return config_path.parent / "state"
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if is_root():
        return Path("/var/lib/dc-agent")
    return _xdg("XDG_STATE_HOME", ".local/state") / "dc-agent"


def resolve_config_path(flag: str | Path | None) -> Path:
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(ENV_PREFIX + "CONFIG"):
        return Path(os.environ[ENV_PREFIX + "CONFIG"]).expanduser()
    return default_config_path()


# ---------------------------------------------------------------------------------------------------
# Options of the [agent] table: name -> (parser, default). `None` default = required (or optional).


def _positive_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a number is required")
    number = float(value)
    if not number > 0:
        raise ValueError("must be greater than 0")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("a whole number is required")
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a number is required")
    number = float(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("a whole number is required")
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string is required")
    return value.strip()


def _url(value: Any) -> str:
    text = _string(value).rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError("must start with https:// (or http:// for a local test server)")
    return text


def _hex_key(value: Any) -> str:
    text = _string(value).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("must be 64 lowercase hex characters (an Ed25519 public key)")
    return text


API_DIALECTS = ("pool-api", "decent-cloud")


def _dialect(value: Any) -> str:
    text = _string(value).lower()
    if text not in API_DIALECTS:
        raise ValueError("must be pool-api (our pool server) or decent-cloud (the live Decent Cloud API)")
    return text


def _listen(value: Any) -> str:
    from dc_agent.metrics import parse_listen

    text = _string(value)
    parse_listen(text)
    return text


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError("must be true or false")


def _log_level(value: Any) -> str:
    text = _string(value).lower()
    if text not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be one of debug, info, warning, error")
    return text


AGENT_OPTIONS: dict[str, tuple[Callable[[Any], Any], Any, str]] = {
    # name: (parser, default, one-line help used by the README and `--help`)
    "api_url": (_url, None, "base URL of pool_api (the agent adds /api/v1)"),
    "api_dialect": (_dialect, "pool-api", "which API the agent speaks: pool-api or decent-cloud (written by setup)"),
    "provider_pubkey": (_hex_key, None, "the provider this agent works for (written by setup)"),
    "pool_id": (_string, None, "the pool this agent belongs to (written by setup)"),
    "pool_name": (_string, None, "the pool's name, for display"),
    "label": (_string, None, "a name for this agent in logs and `status`"),
    "poll_interval_seconds": (_positive_number, 30.0, "how often to ask for pending contracts"),
    "lock_timeout_seconds": (_positive_number, 300.0, "the server's lock TTL; the lock is renewed every third of it"),
    "max_concurrent": (_positive_int, 2, "contracts provisioned at once"),
    "failure_retries": (_non_negative_int, 2, "where a failure report is final (decent-cloud), attempts "
                        "retried locally first"),
    "max_consecutive_failures": (_positive_int, 5, "failures in a row after which a contract or tenant action "
                                 "backs off exponentially (cap 1 h)"),
    "health_interval_seconds": (_positive_number, 300.0, "how often each instance's health is checked and reported"),
    "actions_interval_seconds": (_positive_number, 30.0, "how often to read pending password resets and key "
                                 "rotations"),
    "shutdown_grace_seconds": (_non_negative_number, 60.0, "on SIGTERM, how long running contracts may finish"),
    "reconcile_interval_seconds": (_positive_number, 300.0, "how often to reconcile instances with the server"),
    "request_timeout_seconds": (_positive_number, 30.0, "timeout of one HTTP request"),
    "ca_cert": (_string, None, "PEM file of a private CA that signed pool_api's certificate"),
    "state_dir": (_string, None, "outbox and status directory (default /var/lib/dc-agent as root)"),
    "log_level": (_log_level, "info", "debug, info, warning or error"),
    "metrics_listen": (_listen, None, "HOST:PORT for Prometheus metrics (off unless set; e.g. 127.0.0.1:9464)"),
    "auto_upgrade": (_bool, False, "act on a heartbeat's upgradeToVersion: run `dc-agent upgrade --version V` "
                     "(once per version)"),
}
KEYS_OPTIONS = {"private_key_path"}
FLAG_OPTIONS = {"api_url", "poll_interval_seconds", "max_concurrent", "state_dir", "log_level",
                "private_key_path", "lock_timeout_seconds"}


@dataclass(frozen=True)
class ProvisionerTable:
    """One provisioner of the agent: the default (`[provisioner]`, named by its type) or a
    `[provisioners.<name>]` table (its `type`, the rest that driver's settings)."""

    name: str
    type: str
    settings: dict[str, Any]
    default: bool = False

    @property
    def table(self) -> str:
        """How messages name the table the settings came from."""
        return f"[provisioner.{self.type}]" if self.default else f"[provisioners.{self.name}]"


@dataclass
class Settings:
    """The validated configuration of one agent."""

    config_path: Path
    api_url: str
    provider_pubkey: str
    pool_id: str | None
    private_key_path: Path
    state_dir: Path
    provisioner_type: str
    provisioner_settings: dict[str, Any] = field(default_factory=dict)
    api_dialect: str = "pool-api"
    pool_name: str | None = None
    label: str | None = None
    poll_interval_seconds: float = 30.0
    lock_timeout_seconds: float = 300.0
    max_concurrent: int = 2
    failure_retries: int = 2
    max_consecutive_failures: int = 5
    health_interval_seconds: float = 300.0
    actions_interval_seconds: float = 30.0
    shutdown_grace_seconds: float = 60.0
    reconcile_interval_seconds: float = 300.0
    request_timeout_seconds: float = 30.0
    ca_cert: str | None = None
    log_level: str = "info"
    metrics_listen: str | None = None
    auto_upgrade: bool = False
    extra_provisioners: list["ProvisionerTable"] = field(default_factory=list)  # [provisioners.<name>]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def renew_interval_seconds(self) -> float:
        return self.lock_timeout_seconds / 3

    def public_view(self) -> dict[str, Any]:
        """What `status` may show: no secret of the provisioner settings."""
        from dc_common.redact import redact_mapping

        return {
            "config_path": str(self.config_path),
            "api_url": self.api_url,
            "api_dialect": self.api_dialect,
            "provider_pubkey": self.provider_pubkey,
            "pool_id": self.pool_id,
            "pool_name": self.pool_name,
            "label": self.label,
            "private_key_path": str(self.private_key_path),
            "state_dir": str(self.state_dir),
            "provisioner_type": self.provisioner_type,
            "provisioner_settings": redact_mapping(self.provisioner_settings),
            "provisioners": [{"name": t.name, "type": t.type, "settings": redact_mapping(t.settings)}
                             for t in self.extra_provisioners],
            "poll_interval_seconds": self.poll_interval_seconds,
            "lock_timeout_seconds": self.lock_timeout_seconds,
            "max_concurrent": self.max_concurrent,
            "shutdown_grace_seconds": self.shutdown_grace_seconds,
            "reconcile_interval_seconds": self.reconcile_interval_seconds,
            "ca_cert": self.ca_cert,
        }


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(
            f"{path}: no config file here; run `dc-agent setup --token TOKEN` first, "
            "or pass --config PATH (or set DC_AGENT_CONFIG)") from None
    except PermissionError:
        raise ConfigFileError(f"{path}: permission denied; run as the agent's user (root for /etc/dc-agent)") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: not valid TOML ({exc}); fix the syntax, "
                              "or re-create it with `dc-agent setup --force`") from None


def _unknown_key(path: Path, table: str, key: str, known: set[str]) -> ConfigFileError:
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    suggestion = f"did you mean `{hint[0]}`?" if hint else f"known keys: {', '.join(sorted(known))}"
    return ConfigFileError(f"{path}: [{table}] {key} is not a known key; {suggestion}")


def load(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None) -> Settings:
    """Read, merge (flags > env > file > defaults) and validate the configuration."""
    path = resolve_config_path(config_path)
    env = os.environ if environ is None else environ
    data = read_toml(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    agent = data.get("agent")
    if not isinstance(agent, dict):
        raise ConfigFileError(f"{path}: the [agent] table is missing; re-run `dc-agent setup --force` "
                              "or copy it from the README's configuration reference")
    for key in agent:
        if key not in AGENT_OPTIONS:
            raise _unknown_key(path, "agent", key, set(AGENT_OPTIONS))
    keys_table = data.get("keys", {})
    if not isinstance(keys_table, dict):
        raise ConfigFileError(f"{path}: [keys] must be a table with private_key_path")
    for key in keys_table:
        if key not in KEYS_OPTIONS:
            raise _unknown_key(path, "keys", key, KEYS_OPTIONS)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (parser, default, _help) in AGENT_OPTIONS.items():
        raw, where = default, "default"
        if name in agent:
            raw, where = agent[name], f"{path}: [agent] {name}"
        env_name = ENV_PREFIX + name.upper()
        if env.get(env_name):
            raw, where = env[env_name], f"environment {env_name}"
        if name in overrides:
            raw, where = overrides[name], f"--{name.replace('_', '-')}"
        if raw is None:
            values[name] = None
            continue
        try:
            values[name] = parser(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigFileError(f"{where} = {raw!r}: {exc}") from None
        sources[name] = where

    for required in ("api_url", "provider_pubkey"):
        if values[required] is None:
            raise ConfigFileError(f"{path}: [agent] {required} is missing; re-run `dc-agent setup --force` "
                                  f"or set it (see the README's configuration reference)")

    key_raw = overrides.get("private_key_path") or env.get(ENV_PREFIX + "PRIVATE_KEY_PATH") \
        or keys_table.get("private_key_path")
    key_path = Path(str(key_raw)).expanduser() if key_raw else default_key_path(path)
    if not key_path.is_absolute():
        key_path = (path.parent / key_path).absolute()

    state_raw = values.pop("state_dir")
    state_dir = Path(state_raw).expanduser() if state_raw else default_state_dir(path)
    if not state_dir.is_absolute():
        state_dir = (path.parent / state_dir).absolute()

    prov = data.get("provisioner")
    if not isinstance(prov, dict) or not isinstance(prov.get("type"), str):
        raise ConfigFileError(f"{path}: [provisioner] type is missing; set it to script, manual or proxmox")
    kind = prov["type"]
    from provisioners import DRIVERS  # light: the drivers themselves are imported lazily

    if kind not in DRIVERS:
        raise ConfigFileError(f"{path}: [provisioner] type = {kind!r} is not a known driver; "
                              f"use one of: {', '.join(sorted(DRIVERS))}")
    driver_settings = prov.get(kind, {})
    if not isinstance(driver_settings, dict):
        raise ConfigFileError(f"{path}: [provisioner.{kind}] must be a table")
    # Tolerate the older flat layout of SPEC.md's first example ([provisioner] api_url = ...).
    flat = {k: v for k, v in prov.items() if k != "type" and not isinstance(v, dict)}
    merged = {**flat, **driver_settings}

    return Settings(
        config_path=path,
        private_key_path=key_path,
        state_dir=state_dir,
        provisioner_type=kind,
        provisioner_settings=merged,
        extra_provisioners=_extra_provisioners(path, data.get("provisioners"), kind),
        sources=sources,
        **values,
    )


PROVISIONER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _extra_provisioners(path: Path, tables: Any, default_type: str) -> list[ProvisionerTable]:
    """The `[provisioners.<name>]` tables, in file order: each a `type` plus that driver's settings."""
    from provisioners import DRIVERS

    if tables is None:
        return []
    if not isinstance(tables, dict):
        raise ConfigFileError(f"{path}: provisioners must be tables, e.g. [provisioners.gpu] type = \"proxmox\"")
    out = []
    for name, table in tables.items():
        where = f"{path}: [provisioners.{name}]"
        if not PROVISIONER_NAME.match(name):
            raise ConfigFileError(f"{where}: the name may hold letters, digits, '.', '_' and '-' (at most 64)")
        if not isinstance(table, dict):
            raise ConfigFileError(f"{where} must be a table with a type, e.g. type = \"docker\"")
        kind = table.get("type")
        if not isinstance(kind, str):
            raise ConfigFileError(f"{where} type is missing; set it to one of: {', '.join(sorted(DRIVERS))}")
        if kind not in DRIVERS:
            raise ConfigFileError(f"{where} type = {kind!r} is not a known driver; "
                                  f"use one of: {', '.join(sorted(DRIVERS))}")
        if name == default_type:
            raise ConfigFileError(f"{where}: {name!r} already names the default provisioner ([provisioner] type = "
                                  f"{default_type!r}); give this one another name")
        out.append(ProvisionerTable(name=name, type=kind, settings={k: v for k, v in table.items() if k != "type"}))
    return out


def driver_settings(settings: Settings) -> dict[str, Any]:
    """The `[provisioner.<type>]` table plus what the agent provides every driver (its state dir)."""
    out = dict(settings.provisioner_settings)
    out.setdefault("state_dir", str(settings.state_dir / settings.provisioner_type))
    return out


def provisioner_tables(settings: Settings) -> list[ProvisionerTable]:
    """Every provisioner, the default first, each with its driver settings (a named one's state directory is
    `<state_dir>/provisioners/<name>`, apart from the default's `<state_dir>/<type>` and the outbox)."""
    out = [ProvisionerTable(settings.provisioner_type, settings.provisioner_type, driver_settings(settings),
                            default=True)]
    for extra in settings.extra_provisioners:
        own = dict(extra.settings)
        own.setdefault("state_dir", str(settings.state_dir / "provisioners" / extra.name))
        out.append(ProvisionerTable(extra.name, extra.type, own))
    return out


def load_driver(settings: Settings) -> Any:
    """The agent's provisioner: the default's driver, or one routing driver over all of them when
    `[provisioners.<name>]` tables add more (:mod:`provisioners.multi`). Raises provisioners.ConfigError."""
    from provisioners.multi import build

    return build(provisioner_tables(settings), config_path=settings.config_path,
                 state_dir=settings.state_dir / "provisioners")


def render(*, api_url: str, provider_pubkey: str, pool_id: str, pool_name: str | None, label: str | None,
           private_key_path: Path, state_dir: Path, provisioner_type: str, ca_cert: str | None = None,
           api_dialect: str = "pool-api") -> str:
    """The text `dc-agent setup` writes: values via tomli-w, plus comments that say what to fill in."""
    import tomli_w

    agent: dict[str, Any] = {
        "api_url": api_url,
        "api_dialect": api_dialect,
        "provider_pubkey": provider_pubkey,
        "pool_id": pool_id,
    }
    if pool_name:
        agent["pool_name"] = pool_name
    if label:
        agent["label"] = label
    agent.update({
        "poll_interval_seconds": 30,
        "lock_timeout_seconds": 300,
        "max_concurrent": 2,
        "shutdown_grace_seconds": 60,
        "state_dir": str(state_dir),
    })
    if ca_cert:
        agent["ca_cert"] = ca_cert
    doc = {
        "agent": agent,
        "keys": {"private_key_path": str(private_key_path)},
        "provisioner": {"type": provisioner_type, provisioner_type: {}},
    }
    body = tomli_w.dumps(doc)
    examples = {
        "script": ('# command = ["/usr/local/bin/provision-vm"]   # argv; contract JSON on stdin, instance JSON on stdout\n'
                   "# timeout_seconds = 900\n"
                   '# terminate_command = ["/usr/local/bin/terminate-vm"]\n'
                   '# list_command = ["/usr/local/bin/list-vms"]\n'
                   '# find_command = ["/usr/local/bin/find-vm"]\n'),
        "manual": "# No settings needed: see `dc-agent manual --help`.\n",
        "proxmox": ('# api_url = "https://proxmox.local:8006"\n'
                    '# api_token_id = "dc-agent@pam!provisioning"\n'
                    '# api_token_secret = "..."\n'
                    '# node = "pve1"\n'
                    "# template_vmid = 100\n"),
    }
    header = ("# dc-agent configuration, written by `dc-agent setup`. See the README's configuration reference.\n"
              "# Environment variables DC_AGENT_<KEY> and command-line flags override [agent] values.\n\n")
    return header + body + examples.get(provisioner_type, "")
