"""`dc-agent`: the command line. Start-up stays cheap: each command imports its module when it runs.

Commands: setup, run, status, import-config, test-provision, upgrade, manual (list, done, fail). Settings: flags > DC_AGENT_* > file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dc_agent import __version__

app = typer.Typer(
    name="dc-agent",
    help="The Decent Cloud provisioning agent: takes contracts of its pool from the marketplace API, "
         "provisions them with the configured driver (script, manual or proxmox) and reports the result.\n\n"
         "First `dc-agent setup --token TOKEN`, then configure [provisioner] in the config file, "
         "then `dc-agent run` (or enable the systemd service). `dc-agent status` explains what is wrong.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
manual_app = typer.Typer(
    help="Provision by hand (`[provisioner] type = \"manual\"`): list the contracts the running agent holds "
         "for an operator, and hand in the result. The agent keeps renewing each lock until then.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(manual_app, name="manual", short_help="Provision by hand: list, done, fail.")

ConfigOpt = typer.Option(None, "--config", "-c", envvar="DC_AGENT_CONFIG", show_envvar=True,
                         help="Config file [default: /etc/dc-agent/config.toml as root, "
                              "else ~/.config/dc-agent/config.toml].")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dc-agent {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Decent Cloud provisioning agent."""


@app.command(short_help="Register this machine as an agent of a pool (one-time token).")
def setup(
    token: str = typer.Option(..., "--token", "-t", envvar="DC_AGENT_SETUP_TOKEN", show_envvar=True,
                              help="One-time setup token from the pool's 'Add agent' dialog (apt_…)."),
    api_url: str = typer.Option("https://api.dcmarket.io", "--api-url", envvar="DC_AGENT_API_URL",
                                show_envvar=True, help="Base URL of the marketplace API."),
    config: Optional[Path] = ConfigOpt,
    label: Optional[str] = typer.Option(None, "--label", help="A name for this agent (default: host name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing config and key (a new identity)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", envvar="DC_AGENT_STATE_DIR", show_envvar=True,
                                             help="Outbox and status directory [default: /var/lib/dc-agent as "
                                                  "root; <config dir>/state for a --config elsewhere]."),
    api_dialect: Optional[str] = typer.Option(
        None, "--api-dialect", envvar="DC_AGENT_API_DIALECT", show_envvar=True,
        help="pool-api (our pool server) or decent-cloud (the live Decent Cloud API). Default: detected from the "
             "setup answer (pool_api says so; the live API does not)."),
    ca_cert: Optional[Path] = typer.Option(None, "--ca-cert", envvar="DC_AGENT_CA_CERT", show_envvar=True,
                                           help="PEM file of a private CA that signed the API's certificate."),
) -> None:
    """Register this machine as an agent of a pool: make a key (0600), redeem the token, write the config.

    Refuses to replace an existing config without --force. On any failure nothing is left behind.
    """
    from dc_agent.commands.setup import run_setup

    raise typer.Exit(run_setup(token=token, api_url=api_url, config=config, label=label, force=force,
                               state_dir=state_dir, ca_cert=ca_cert, api_dialect=api_dialect))


@app.command(short_help="Run the agent (the daemon; --once for one cycle).")
def run(
    config: Optional[Path] = ConfigOpt,
    once: bool = typer.Option(False, "--once", help="Run one cycle (heartbeat, outbox, poll, provision) and exit."),
    api_url: Optional[str] = typer.Option(None, "--api-url", envvar="DC_AGENT_API_URL", show_envvar=True,
                                          help="Override [agent] api_url."),
    poll_interval_seconds: Optional[float] = typer.Option(
        None, "--poll-interval-seconds", envvar="DC_AGENT_POLL_INTERVAL_SECONDS", show_envvar=True,
        help="Override [agent] poll_interval_seconds."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", envvar="DC_AGENT_MAX_CONCURRENT",
                                                 show_envvar=True, help="Override [agent] max_concurrent."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", envvar="DC_AGENT_STATE_DIR", show_envvar=True,
                                             help="Override [agent] state_dir."),
    log_level: Optional[str] = typer.Option(None, "--log-level", envvar="DC_AGENT_LOG_LEVEL", show_envvar=True,
                                            help="debug, info, warning or error."),
    log_format: str = typer.Option("auto", "--log-format", envvar="DC_AGENT_LOG_FORMAT", show_envvar=True,
                                   help="auto (JSON unless stdout is a terminal), json or console."),
) -> None:
    """Run the agent: heartbeat, take contracts of the pool, provision, renew locks, report, reconcile.

    SIGTERM/SIGINT: stop taking contracts and let running ones finish (shutdown_grace_seconds), then cancel
    and release them; a second signal cancels at once.
    """
    from dc_agent.commands.run import run_agent

    overrides = {"api_url": api_url, "poll_interval_seconds": poll_interval_seconds,
                 "max_concurrent": max_concurrent, "state_dir": str(state_dir) if state_dir else None,
                 "log_level": log_level}
    raise typer.Exit(run_agent(config=config, overrides=overrides, once=once, log_format=log_format))


@app.command(short_help="Check config, key, API, signature, provisioner; exit 0 if healthy.")
def status(
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    api_url: Optional[str] = typer.Option(None, "--api-url", envvar="DC_AGENT_API_URL", show_envvar=True,
                                          help="Override [agent] api_url."),
) -> None:
    """Explain the agent's health: config, identity, API reachable, signature accepted (a signed
    heartbeat), last poll, contracts in progress, outbox backlog, provisioner health, version.

    Exit status 0 when healthy, 1 otherwise. Secrets are shown as ***.
    """
    from dc_agent.commands.status import run_status

    raise typer.Exit(run_status(config=config, as_json=as_json, overrides={"api_url": api_url}))


@app.command("import-config", short_help="Take over a Rust dc-agent 0.6's config and key.")
def import_config(
    source: Path = typer.Argument(..., metavar="PATH",
                                  help="The Rust agent's config (its default: /etc/dc-agent/dc-agent.toml)."),
    key: Optional[Path] = typer.Option(None, "--key", help="The Rust agent's key file [default: the file (or "
                                                           "inline key) named by [api] agent_secret_key]."),
    config: Optional[Path] = ConfigOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing config and key."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the mapping and the config (secrets masked); "
                                                          "write nothing."),
    public_ip: Optional[str] = typer.Option(None, "--public-ip", help="docker provisioner: the address tenants "
                                                                       "reach this host at [default: [gateway] "
                                                                       "public_ip]."),
) -> None:
    """Switch from the Rust dc-agent 0.6: write our config (api_dialect = "decent-cloud") and key file (0600)
    from its dc-agent.toml and agent key, and print each Rust key that has no equivalent, with why.

    The result is checked to load and to build its driver before anything is written; an existing config
    or key is replaced only with --force. Exit status 0 ok, 1 refused (files exist) or not written,
    78 the Rust config or key cannot be imported (the message names the file and key).
    """
    from dc_agent.commands.import_config import run_import

    raise typer.Exit(run_import(source=source, key=key, config=config, force=force, dry_run=dry_run,
                                public_ip=public_ip))


@app.command("test-provision", short_help="Make, check and remove one test instance (no server involved).")
def test_provision(
    config: Optional[Path] = ConfigOpt,
    provisioner: Optional[str] = typer.Option(None, "--provisioner", "-p", metavar="NAME",
                                              help="Which provisioner: a [provisioners.<name>] name or a type "
                                                   "[default: the [provisioner] one]."),
    keep: bool = typer.Option(False, "--keep", help="Leave the instance running and print how to remove it."),
    ssh_key: Optional[Path] = typer.Option(None, "--ssh-key", metavar="FILE",
                                           help="OpenSSH public key to install, so you can log in "
                                                "[default: a throwaway key nobody can use]."),
    health_timeout: float = typer.Option(120.0, "--health-timeout", metavar="SECONDS",
                                         help="How long the instance may take to report healthy."),
    remove: Optional[str] = typer.Option(None, "--remove", metavar="EXTERNAL_ID",
                                         help="Only terminate this instance (one a --keep run left)."),
) -> None:
    """A real round trip on a configured driver: health -> provision -> instance health -> terminate ->
    verify, with a made-up contract (id test-<random>, 1 core, 1024 MB, 10 GB). The server is never
    contacted: run it before `dc-agent run`, or next to it.

    Each step prints its time. On a failure, Ctrl-C or SIGTERM the driver removes what it made and the
    instance (if any) is terminated; a second Ctrl-C leaves at once. The manual driver cannot be tested
    (an operator makes its machines). Exit status 0 passed, 1 failed, 78 configuration error.
    """
    from dc_agent.commands.test_provision import run_test_provision

    raise typer.Exit(run_test_provision(config=config, provisioner=provisioner, keep=keep, ssh_key=ssh_key,
                                        health_timeout=health_timeout, remove=remove))


@app.command(short_help="Upgrade this venv's dc-agent with pip, restart the service, roll back on failure.")
def upgrade(
    config: Optional[Path] = ConfigOpt,
    check: bool = typer.Option(False, "--check", help="Only say what would be installed."),
    version: Optional[str] = typer.Option(None, "--version", metavar="V",
                                          help="Install dc-agent==V [default: the newest the index or --from has]."),
    source: Optional[Path] = typer.Option(None, "--from", metavar="PATH",
                                          help="A wheel, a project directory, or a directory of wheels to install "
                                               "from instead of the package index."),
    no_restart: bool = typer.Option(False, "--no-restart", help="Install only; do not restart the service."),
    unit: str = typer.Option("dc-agent", "--unit", metavar="NAME", help="The systemd unit that runs the agent."),
    health_timeout: float = typer.Option(120.0, "--health-timeout", metavar="SECONDS",
                                         help="How long the restarted agent may take to come up healthy."),
) -> None:
    """Upgrade the dc-agent of the venv this command runs from (python -m pip install --upgrade), check the new
    `dc-agent --version`, restart the systemd unit when it is active (its stop drains the running agent), and
    wait until the agent runs the new version and heartbeats (status.json in the state directory).

    The installed version is saved as a wheel in <state_dir>/upgrade/previous first: if the new version does
    not install, does not run or does not come up healthy, that wheel is reinstalled (and the unit restarted).
    pip's own settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, ...). Exit status 0 upgraded (or nothing to do),
    1 failed (rolled back when anything changed), 78 configuration error.
    """
    from dc_agent.commands.upgrade import run_upgrade

    raise typer.Exit(run_upgrade(config=config, check=check, version=version, source=source,
                                 restart=not no_restart, unit=unit, health_timeout=health_timeout))


@manual_app.command("list", short_help="Contracts waiting for an operator.")
def manual_list(
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Contracts waiting for an operator, and instances the agent asks to be removed."""
    from dc_agent.commands.manual import run_list

    raise typer.Exit(run_list(config=config, as_json=as_json))


@manual_app.command("done", short_help="Hand in a machine you provisioned.")
def manual_done(
    contract: str = typer.Argument(..., help="Contract id (see `dc-agent manual list`)."),
    ip: str = typer.Option(..., "--ip", help="IPv4 address of the machine."),
    ssh_port: int = typer.Option(22, "--ssh-port", help="SSH port."),
    ipv6: Optional[str] = typer.Option(None, "--ipv6", help="IPv6 address."),
    external_id: Optional[str] = typer.Option(None, "--external-id", help="Your name for the machine "
                                                                           "[default: manual-<contract>]."),
    root_password: Optional[str] = typer.Option(None, "--root-password", envvar="DC_AGENT_ROOT_PASSWORD",
                                                help="Root password to hand to the tenant (prefer the env var)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Hand in a machine you provisioned; the running agent reports it."""
    from dc_agent.commands.manual import run_done

    raise typer.Exit(run_done(config=config, contract=contract, ip=ip, ssh_port=ssh_port, ipv6=ipv6,
                              external_id=external_id, root_password=root_password))


@manual_app.command("fail", short_help="Give a contract back as failed.")
def manual_fail(
    contract: str = typer.Argument(..., help="Contract id (see `dc-agent manual list`)."),
    reason: str = typer.Option(..., "--reason", help="Why it cannot be provisioned (shown to the provider)."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Give a contract back as failed; the running agent reports it and releases the lock."""
    from dc_agent.commands.manual import run_fail

    raise typer.Exit(run_fail(config=config, contract=contract, reason=reason))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
