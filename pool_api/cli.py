"""`dc-pool-api`: serve the agent-pools API, and the admin commands that stand in for the marketplace.

Every option can also be set as DC_POOL_API_<OPTION> (e.g. DC_POOL_API_DATABASE_URL); `--help`
shows the variable. Heavy imports (SQLAlchemy, FastAPI, uvicorn) happen inside the commands.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pool_api.settings import ENV_PREFIX

app = typer.Typer(help="The reference agent-pools server (pool_api) and its admin commands.", no_args_is_help=True,
                  add_completion=False)
provider_app = typer.Typer(help="Providers (the marketplace owns them; this is the admin path).", no_args_is_help=True)
offering_app = typer.Typer(help="Offerings (also creatable through the signed provider API).", no_args_is_help=True)
contract_app = typer.Typer(help="Contracts (stand-in for the marketplace checkout).", no_args_is_help=True)
app.add_typer(provider_app, name="provider")
app.add_typer(offering_app, name="offering")
app.add_typer(contract_app, name="contract")

DB_HELP = ("Database URL: postgresql+psycopg://user@host/db (production) or sqlite:///path. Default: an embedded "
           "SQLite file, /var/lib/dc-pool-api/pool.db as root, else $XDG_STATE_HOME/dc-pool-api/pool.db "
           "(~/.local/state/dc-pool-api/pool.db).")
DatabaseUrl = Annotated[Optional[str], typer.Option("--database-url", envvar=f"{ENV_PREFIX}DATABASE_URL",
                                                    show_envvar=True, help=DB_HELP)]


LOG_LEVELS = ("debug", "info", "warning", "error")
# The shape of an Ed25519 key in hex, checked here: pool_api.auth (PyNaCl) and pool_api.schemas (pydantic
# models) would cost the admin commands tens of milliseconds to import.
HEX64_KEY = re.compile(r"[0-9a-fA-F]{64}")


def _env(name: str) -> dict[str, Any]:
    return {"envvar": f"{ENV_PREFIX}{name}", "show_envvar": True}


def _engine(database_url: str | None, migrate: bool = True):  # noqa: ANN202
    from pool_api import db

    engine = db.create_engine(database_url or db.default_database_url())
    if migrate:
        db.migrate_if_needed(engine)  # one SELECT when the schema is at head: no Alembic import
    return engine


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _run(database_url: str | None, fn):  # noqa: ANN001, ANN202
    """Run `fn(conn)` in one transaction; ApiError becomes an error message and exit status 1."""
    from pool_api.errors import ApiError

    engine = _engine(database_url)
    try:
        with engine.begin() as conn:
            return fn(conn)
    except ApiError as exc:
        _fail(exc.message)
    finally:
        engine.dispose()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.", **_env("HOST"))] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", **_env("PORT"))] = 8080,
    database_url: DatabaseUrl = None,
    lock_ttl_seconds: Annotated[int, typer.Option(min=1, help="Provisioning lock lifetime.", **_env("LOCK_TTL_SECONDS"))] = 300,
    lock_sweep_seconds: Annotated[float, typer.Option(min=0.05, help="Period of the expired-lock sweep.",
                                                      **_env("LOCK_SWEEP_SECONDS"))] = 60,
    token_sweep_seconds: Annotated[float, typer.Option(min=0.05, help="Period of the expired-token sweep.",
                                                       **_env("TOKEN_SWEEP_SECONDS"))] = 3600,
    heartbeat_seconds: Annotated[int, typer.Option(min=1, help="nextHeartbeatSeconds sent to agents.",
                                                   **_env("HEARTBEAT_SECONDS"))] = 30,
    public_url: Annotated[Optional[str], typer.Option(help="API URL shown in setupCommand (default: the request's base URL).",
                                                      **_env("PUBLIC_URL"))] = None,
    installer_path: Annotated[Optional[str], typer.Option(
        help="Installer served as GET /install.sh for the one-liner (default: systemd/install.sh of this checkout).",
        **_env("INSTALLER_PATH"))] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.", **_env("LOG_LEVEL"))] = "info",
    claim: Annotated[bool, typer.Option("--claim/--no-claim", help="Advertise POST .../contracts/claim to agents "
                                        "(`claim` in the setup and heartbeat answers); the endpoint works either way.",
                                        **_env("CLAIM"))] = True,
    claim_recheck_seconds: Annotated[float, typer.Option(min=0.05, help="Waiting claims re-check the database this "
                                                         "often, whatever the notifications.",
                                                         **_env("CLAIM_RECHECK_SECONDS"))] = 2.0,
    unhealthy_after_failures: Annotated[int, typer.Option(min=1, help="Failed provisions in a row after which an "
                                                          "agent is passed over while a healthy one of its pool is "
                                                          "online.", **_env("UNHEALTHY_AFTER_FAILURES"))] = 3,
    failure_cooldown_seconds: Annotated[int, typer.Option(min=0, help="An unhealthy agent gets work again once its "
                                                          "last failure is this old.",
                                                          **_env("FAILURE_COOLDOWN_SECONDS"))] = 600,
    metrics: Annotated[bool, typer.Option("--metrics/--no-metrics", help="Serve GET /metrics (Prometheus; no "
                                          "signature: keep it on loopback or behind the proxy).",
                                          **_env("METRICS"))] = True,
) -> None:
    """Apply migrations, then serve the API (GET /api/v1/health answers 200) with the background jobs."""
    import uvicorn

    from pool_api import db, logs
    from pool_api.app import create_app
    from pool_api.settings import Settings

    if log_level.lower() not in LOG_LEVELS:
        _fail(f"--log-level: one of {', '.join(LOG_LEVELS)}")
    logs.configure(log_level)
    settings = Settings(database_url=db.normalize_url(database_url or db.default_database_url()),
                        lock_ttl_seconds=lock_ttl_seconds, lock_sweep_seconds=lock_sweep_seconds,
                        token_sweep_seconds=token_sweep_seconds, heartbeat_seconds=heartbeat_seconds,
                        public_url=public_url, installer_path=installer_path, advertise_claim=claim,
                        claim_recheck_seconds=claim_recheck_seconds, unhealthy_after_failures=unhealthy_after_failures,
                        failure_cooldown_seconds=failure_cooldown_seconds, metrics=metrics)
    engine = _engine(settings.database_url)
    app = create_app(settings, engine)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:  # noqa: ANN001
            app.state.claim_hub.release_all()  # waiting claims answer `[]` now instead of holding the stop
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level=log_level.lower(),
                            server_header=False, timeout_graceful_shutdown=10)
    Server(config).run()


@app.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Apply the database migrations and exit (serve does this on start too)."""
    _engine(database_url).dispose()
    typer.echo("database is at the newest revision")


@provider_app.command("add")
def provider_add(
    pubkey: Annotated[str, typer.Option(help="The provider's Ed25519 public key, 64 hex characters.")],
    name: Annotated[Optional[str], typer.Option(help="Display name.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a provider key (adding it again updates the name)."""
    import sqlalchemy as sa

    from pool_api.db import now_ns
    from pool_api.tables import providers

    if not HEX64_KEY.fullmatch(pubkey):
        _fail("--pubkey: must be a 32-byte Ed25519 public key in hex (64 characters)")
    pubkey = pubkey.lower()

    def add(conn: sa.Connection) -> None:
        updated = conn.execute(sa.update(providers).where(providers.c.pubkey == pubkey).values(name=name)).rowcount
        if not updated:
            conn.execute(sa.insert(providers).values(pubkey=pubkey, name=name, created_at_ns=now_ns()))

    _run(database_url, add)
    typer.echo(pubkey)


@app.command("login-link")
def login_link(
    pubkey: Annotated[str, typer.Option(help="The provider's Ed25519 public key, 64 hex characters.")],
    database_url: DatabaseUrl = None,
    base_url: Annotated[Optional[str], typer.Option(
        help="Public URL of the server, as the browser reaches it (default: --public-url of serve, else "
             "http://127.0.0.1:8080).", **_env("PUBLIC_URL"))] = None,
    ttl_minutes: Annotated[int, typer.Option(min=1, max=1440, help="Minutes until the link expires.")] = 10,
) -> None:
    """Print a one-time sign-in link to the provider web pages (/provider) for a registered provider."""
    from pool_api.pages.auth import create_login_link

    if not HEX64_KEY.fullmatch(pubkey):
        _fail("--pubkey: must be a 32-byte Ed25519 public key in hex (64 characters)")
    url, _expires = _run(database_url, lambda conn: create_login_link(
        conn, pubkey, base_url or "http://127.0.0.1:8080", ttl_minutes))
    typer.echo(url)
    typer.echo(f"Open it in your browser within {ttl_minutes} minutes; it signs in once.", err=True)


def _json_option(value: str | None, flag: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        _fail(f"{flag}: not valid JSON ({exc})")
    if not isinstance(parsed, dict):
        _fail(f"{flag}: must be a JSON object")
    return parsed


@offering_app.command("create")
def offering_create(
    provider: Annotated[str, typer.Option(help="Provider public key (hex).")],
    offering_id: Annotated[str, typer.Option(help="Offering id (opaque string).")],
    name: Annotated[str, typer.Option(help="Offering name.")],
    country: Annotated[str, typer.Option(help="Datacenter country, ISO 3166-1 alpha-2 (routes to a region).")],
    provisioner_type: Annotated[Optional[str], typer.Option(help="proxmox, docker, script or manual (default: route as proxmox).")] = None,
    pool_id: Annotated[Optional[str], typer.Option(help="Explicit agent pool (overrides location routing).")] = None,
    cpu_cores: Annotated[Optional[int], typer.Option(min=0)] = None,
    memory_mb: Annotated[Optional[int], typer.Option(min=0)] = None,
    storage_gb: Annotated[Optional[int], typer.Option(min=0)] = None,
    price: Annotated[Optional[float], typer.Option(min=0)] = None,
    product_type: Annotated[str, typer.Option()] = "compute",
    provisioner_config: Annotated[Optional[str], typer.Option(help="JSON object passed to the agent.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an offering for a provider; prints its id."""
    import pydantic

    from pool_api import offerings
    from pool_api.errors import describe_validation_errors
    from pool_api.schemas import OfferingCreate

    raw = dict(offeringId=offering_id, name=name, datacenterCountry=country, provisionerType=provisioner_type,
               agentPoolId=pool_id, cpuCores=cpu_cores, memoryMb=memory_mb, storageGb=storage_gb, price=price,
               productType=product_type, provisionerConfig=_json_option(provisioner_config, "--provisioner-config"))
    try:
        body = OfferingCreate.model_validate({k: v for k, v in raw.items() if v is not None})
    except pydantic.ValidationError as exc:
        _fail(describe_validation_errors(list(exc.errors()))[1])
    fields = body.model_dump(exclude={"offering_id"})
    created = _run(database_url, lambda conn: _create_offering(conn, provider.lower(), fields, body.offering_id, offerings))
    typer.echo(created["offeringId"])


def _create_offering(conn, provider: str, fields, offering_id, offerings):  # noqa: ANN001, ANN202
    _require_provider(conn, provider)
    return offerings.create_offering(conn, provider, fields, offering_id)


def _require_provider(conn, provider: str) -> None:  # noqa: ANN001
    import sqlalchemy as sa

    from pool_api.errors import ApiError
    from pool_api.tables import providers

    if conn.execute(sa.select(providers.c.pubkey).where(providers.c.pubkey == provider)).first() is None:
        raise ApiError(404, f"unknown provider {provider}: run `dc-pool-api provider add` first")


@offering_app.command("export")
def offering_export(
    provider: Annotated[str, typer.Option(help="Provider public key (hex).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Write all of the provider's offerings as CSV (the header is in `offering import --help`)."""
    from pool_api import offerings_csv

    def export(conn) -> str:  # noqa: ANN001
        _require_provider(conn, provider.lower())
        return offerings_csv.export_csv(conn, provider.lower())

    text = _run(database_url, export)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        _fail(f"--output {output}: cannot write ({exc.strerror})")
    typer.echo(f"wrote {text.count(chr(10)) - 1} offerings to {output}", err=True)


@offering_app.command("import")
def offering_import(
    csv_file: Annotated[Path, typer.Argument(metavar="FILE", help="The CSV file; - reads standard input.")],
    provider: Annotated[str, typer.Option(help="Provider public key (hex).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Create or replace offerings from CSV, all or nothing (an error on any line writes nothing).

    Header: offering_id,name,product_type,datacenter_country,provisioner_type,agent_pool_id,price,cpu_cores,
    memory_mb,storage_gb,status,provisioner_config (any order; name and datacenter_country required).
    """
    from pool_api import offerings_csv

    try:
        text = sys.stdin.read() if str(csv_file) == "-" else csv_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{csv_file}: cannot read as UTF-8 text ({exc})")

    def load(conn) -> dict[str, int]:  # noqa: ANN001
        _require_provider(conn, provider.lower())
        return offerings_csv.import_csv(conn, provider.lower(), text)

    try:
        result = _run(database_url, load)
    except offerings_csv.CsvError as exc:
        for line in exc.errors:
            typer.echo(f"error: {csv_file}: {line}", err=True)
        typer.echo("nothing was imported", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"imported {result['created'] + result['updated']} offerings: {result['created']} created, "
               f"{result['updated']} updated")


@contract_app.command("create")
def contract_create(
    offering: Annotated[str, typer.Option(help="Offering id.")],
    ssh_pubkey: Annotated[Optional[str], typer.Option(help="The requester's SSH public key.")] = None,
    count: Annotated[int, typer.Option(min=1, max=100_000, help="How many contracts.")] = 1,
    status: Annotated[str, typer.Option(help="Initial status.")] = "accepted",
    payment_status: Annotated[str, typer.Option(help="Payment status.")] = "succeeded",
    instance_config: Annotated[Optional[str], typer.Option(help="JSON object passed to the agent.")] = None,
    duration_hours: Annotated[Optional[float], typer.Option(
        min=0.0, help="The contract ends this many hours from now (its instance is then terminated).")] = None,
    ends_at_ns: Annotated[Optional[int], typer.Option(min=0, help="The contract's end, ns since the epoch.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create paid, accepted contracts for an offering; prints one id per line. Without an end they run until cancelled."""
    from pool_api import contracts
    from pool_api.db import now_ns

    if status not in contracts.STATUSES:
        _fail(f"--status: one of {', '.join(contracts.STATUSES)}")
    if payment_status not in contracts.PAYMENT_STATUSES:
        _fail(f"--payment-status: one of {', '.join(contracts.PAYMENT_STATUSES)}")
    if duration_hours is not None and ends_at_ns is not None:
        _fail("--duration-hours and --ends-at-ns: give only one of the two")
    if duration_hours is not None:
        ends_at_ns = now_ns() + int(duration_hours * 3600 * 1_000_000_000)
    if ends_at_ns is not None and ends_at_ns >= 2**63:
        _fail("--ends-at-ns: too large (ns since the epoch, below 2**63)")
    config = _json_option(instance_config, "--instance-config")
    ids = _run(database_url, lambda conn: contracts.create_contracts(
        conn, offering, ssh_pubkey=ssh_pubkey, count=count, status=status, payment_status=payment_status,
        instance_config=config, ends_at_ns=ends_at_ns))
    typer.echo("\n".join(ids))


def _print_contract(c: dict[str, Any]) -> None:
    lock = f" lock={c['lockAgent'][:12]}… until {c['lockExpiresNs']}" if c["lockAgent"] else ""
    ends = f" ends={c['endsAtNs']}" if c["endsAtNs"] is not None else ""
    health = f" health={c['health']['status']}" if c["health"] else ""
    typer.echo(f"{c['contractId']}  {c['status']:<12} offering={c['offeringId']} failures={c['failureCount']}"
               f"{ends}{health}{lock}")


@contract_app.command("list")
def contract_list(
    status: Annotated[Optional[str], typer.Option(help="Only contracts with this status.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """List contracts, oldest first."""
    from pool_api import contracts

    rows = _run(database_url, lambda conn: contracts.list_contracts(conn, status=status, limit=1_000_000))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for c in rows:
        _print_contract(c)


@contract_app.command("show")
def contract_show(
    contract_id: Annotated[str, typer.Argument(help="Contract id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Show one contract (lock, instance details, failures)."""
    from pool_api import contracts

    c = _run(database_url, lambda conn: contracts.contract_json(contracts.get_contract(conn, contract_id)))
    if as_json:
        typer.echo(json.dumps(c, indent=2))
        return
    for key, value in c.items():
        typer.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@contract_app.command("cancel")
def contract_cancel(
    contract_id: Annotated[str, typer.Argument(help="Contract id.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Mark a contract cancelled (its agent then terminates the instance and reports `terminated`)."""
    from pool_api import contracts

    c = _run(database_url, lambda conn: contracts.cancel(conn, contract_id))
    typer.echo(f"{c['contractId']} {c['status']}")


ContractId = Annotated[str, typer.Argument(help="Contract id.")]


@contract_app.command("pause")
def contract_pause(contract_id: ContractId, database_url: DatabaseUrl = None) -> None:
    """Pause a provisioned contract: its agent stops the instance and keeps the disk (reconcile lists it under pause)."""
    from pool_api import pause

    out = _run(database_url, lambda conn: pause.pause(conn, contract_id))
    typer.echo(f"{out['contractId']} {out['status']}{' (already)' if out['repeated'] else ''}")


@contract_app.command("resume")
def contract_resume(contract_id: ContractId, database_url: DatabaseUrl = None) -> None:
    """Resume a paused contract: provisioned again, its agent starts the instance it stopped."""
    from pool_api import pause

    out = _run(database_url, lambda conn: pause.resume(conn, contract_id))
    typer.echo(f"{out['contractId']} {out['status']}{' (already)' if out['repeated'] else ''}")


KeyFile = Annotated[Path, typer.Option("--key-file", help="The tenant's X25519 private key (hex); made, mode 0600, if missing.")]


@contract_app.command("reset-password")
def contract_reset_password(contract_id: ContractId, key_file: KeyFile, database_url: DatabaseUrl = None) -> None:
    """Ask the contract's agent for a new password, sealed to the key in --key-file (the tenant's stand-in); prints the requestId."""
    from pool_api import actions
    from pool_api.credentials import CredentialError, load_or_create_key, public_key_hex

    try:
        key, created = load_or_create_key(key_file)
    except CredentialError as exc:
        _fail(str(exc))
    out = _run(database_url, lambda conn: actions.request_password_reset(conn, contract_id, public_key_hex(key)))
    typer.echo(out["requestId"])
    typer.echo(f"{'wrote a new key to' if created else 'using the key in'} {key_file}; read the password with "
               f"`dc-pool-api contract credentials {contract_id} --key-file {key_file}` once the agent reports",
               err=True)


@contract_app.command("credentials")
def contract_credentials(contract_id: ContractId, key_file: KeyFile, database_url: DatabaseUrl = None) -> None:
    """Print the password of the contract's last password reset, opened with --key-file (what the tenant sees)."""
    from pool_api import actions
    from pool_api.credentials import CredentialError, load_key, open_sealed, public_key_hex

    if not key_file.exists():
        _fail(f"--key-file {key_file}: no such file (the file `contract reset-password --key-file` wrote)")
    row = _run(database_url, lambda conn: actions.latest_password_reset(conn, contract_id))
    if row is None:
        _fail(f"contract {contract_id} has no password reset: run `dc-pool-api contract reset-password` first")
    if row.status == "pending":
        _fail(f"password reset {row.request_id} is still pending: its agent has not reported yet")
    if row.status == "failed":
        _fail(f"password reset {row.request_id} failed on the agent: {row.error}")
    try:
        key = load_key(key_file)
        if public_key_hex(key) != row.recipient_public_key:
            _fail(f"--key-file {key_file}: not the key password reset {row.request_id} was sealed to")
        typer.echo(open_sealed(key, row.encrypted_password))
    except CredentialError as exc:
        _fail(str(exc))


@contract_app.command("rotate-ssh-key")
def contract_rotate_ssh_key(
    contract_id: ContractId,
    key: Annotated[str, typer.Option("--key", help='The new OpenSSH public key line, e.g. "ssh-ed25519 AAAA… user@host".')],
    database_url: DatabaseUrl = None,
) -> None:
    """Ask the contract's agent to replace the instance's SSH key with --key; prints the requestId."""
    from pool_api import actions
    from pool_api.sshkey import key_line_problem, normalize_key_line

    problem = key_line_problem(key)
    if problem:
        _fail(f"--key: not an OpenSSH public key line: {problem}")
    out = _run(database_url, lambda conn: actions.request_ssh_key_rotation(conn, contract_id, normalize_key_line(key)))
    typer.echo(out["requestId"])


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
