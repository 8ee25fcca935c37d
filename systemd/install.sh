#!/usr/bin/env bash
# dc-agent installer: a venv under /opt/dc-agent, the package, `dc-agent setup`, and the systemd unit.
#
#   curl -sSL https://…/install.sh | sudo bash -s -- --token TOKEN [--api-url URL]
#
# Safe to run twice: an existing config is kept (setup is not re-run, so the one-time token is not
# spent again) unless --force; the venv is upgraded in place and the unit replaced, then restarted.
# `bash install.sh --help` lists the options. The token is never printed.
set -Eeuo pipefail
set +x # never trace: the command lines below carry the token

PROG="dc-agent install"
DEFAULT_PREFIX=/opt/dc-agent
DEFAULT_CONFIG_DIR=/etc/dc-agent
DEFAULT_STATE_DIR=/var/lib/dc-agent
UNIT_NAME=dc-agent.service

usage() {
	cat <<'EOF'
Install dc-agent, the Decent Cloud provisioning agent, as a systemd service.

Usage: install.sh --token TOKEN [options]
       curl -sSL …/install.sh | sudo bash -s -- --token TOKEN [--api-url URL]

  --token TOKEN      one-time agent-pool token from the provider UI (not needed to upgrade an
                     existing install: its config is kept); or set DC_AGENT_SETUP_TOKEN
  --api-url URL      pool API base URL (default: the one built into `dc-agent setup`)
  --label NAME       a name for this agent in logs and `dc-agent status`
  --from PATH        install from a checkout or a wheel instead of the package index
  --python PATH      the Python (3.11 or newer) for the venv (default: first of python3,
                     python3.13, python3.12, python3.11 that is new enough)
  --prefix DIR       where the venv goes (default /opt/dc-agent; the venv is DIR/venv)
  --config-dir DIR   config.toml and agent.key, mode 0700 (default /etc/dc-agent)
  --state-dir DIR    the agent's outbox and status, mode 0700 (default /var/lib/dc-agent)
  --no-systemd       install the unit file but make no systemctl call (containers, tests)
  --no-start         enable the service but do not (re)start it
  --root DIR         prefix every system path with DIR (tests, staging); implies no service start
  --force            run setup again even if a config exists (needs a new token; replaces the
                     agent's identity)
  -h, --help         this text

Environment: PIP_* variables (PIP_INDEX_URL, PIP_FIND_LINKS, …) are honoured by pip.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
# An unexpected failure: say where, never what (the failing command may hold the token).
trap 'printf "%s: error: unexpected failure at line %s of install.sh (exit %s)\n" "$PROG" "$LINENO" "$?" >&2' ERR

# The unit, kept identical to systemd/dc-agent.service (tests/systemd checks it), so that the one-liner
# needs no second download.
unit_text() {
	cat <<'UNIT'
# dc-agent: the Decent Cloud provisioning agent.
# Installed by systemd/install.sh as /etc/systemd/system/dc-agent.service. Do not edit in place:
# put changes in a drop-in (`systemctl edit dc-agent`); systemd/script-provisioner.conf.example shows
# what a script provisioner may need relaxed.
#
# Exposure: `systemd-analyze security --offline=true dc-agent.service` scores this unit 1.8 ("OK");
# tests/systemd/test_unit.py keeps it at 3.0 or lower. Documentation: README.md, "Install as a
# systemd service".

[Unit]
Description=Decent Cloud provisioning agent (dc-agent)
Wants=network-online.target
After=network-online.target

[Service]
# The agent sends READY=1 once its loop runs, then WATCHDOG=1 every WatchdogSec/2 (dc_agent/sdnotify.py).
Type=notify
NotifyAccess=main
# 120 s: a hung loop is restarted within two minutes, yet far longer than one loop tick (the loop keeps
# pinging while it retries an unreachable API, so an outage is not a hang).
WatchdogSec=120
ExecStart=/opt/dc-agent/venv/bin/dc-agent run --config /etc/dc-agent/config.toml
Restart=on-failure
RestartSec=10
# 78 (EX_CONFIG): the config is incomplete or wrong; restarting will not fix it, editing it will.
RestartPreventExitStatus=78
Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# SIGTERM to the agent only: it takes no new contracts and lets running ones finish within
# shutdown_grace_seconds (default 60), then stops them, cleans up and releases their locks.
# TimeoutStopSec must exceed that drain plus the clean-up, or systemd kills a healthy drain.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=90

# /etc/dc-agent (config.toml, agent.key) and /var/lib/dc-agent (the outbox), both 0700.
ConfigurationDirectory=dc-agent
ConfigurationDirectoryMode=0700
StateDirectory=dc-agent
StateDirectoryMode=0700
UMask=0077

# Hardening. The agent only needs to read its config, write its state directory and make
# HTTPS connections; a provisioner that needs more gets it from a drop-in, not here.
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
UNIT
}

# A Python that is 3.11 or newer and can make a venv with pip.
python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

find_python() {
	local candidate
	if [ -n "$PYTHON" ]; then
		command -v "$PYTHON" >/dev/null 2>&1 || die "--python $PYTHON: not found"
		python_ok "$PYTHON" || die "--python $PYTHON: dc-agent needs Python 3.11 or newer, this is $("$PYTHON" -V 2>&1)"
		return
	fi
	for candidate in python3 python3.13 python3.12 python3.11; do
		if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
			PYTHON=$candidate
			return
		fi
	done
	if command -v python3 >/dev/null 2>&1; then
		die "dc-agent needs Python 3.11 or newer; python3 here is $(python3 -V 2>&1). Install python3.11 (or newer) and pass --python /usr/bin/python3.11"
	fi
	die "python3 not found: install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)"
}

# Parse "--opt VALUE" and "--opt=VALUE".
need_value() {
	if [ "$#" -lt 2 ] || [ -z "$2" ] || [ "${2#--}" != "$2" ]; then
		die "$1 needs a value (see --help)"
	fi
}

main() {
	local TOKEN="" API_URL="" LABEL="" FROM="" PYTHON="" ROOT="" FORCE=0 SYSTEMD=1 START=1
	local PREFIX=$DEFAULT_PREFIX CONFIG_DIR=$DEFAULT_CONFIG_DIR STATE_DIR=$DEFAULT_STATE_DIR
	local TOKEN_GIVEN=0
	while [ "$#" -gt 0 ]; do
		case "$1" in
		--*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
		esac
		case "$1" in
		--token) need_value "$@"; TOKEN=$2; TOKEN_GIVEN=1; shift 2 ;;
		--api-url) need_value "$@"; API_URL=$2; shift 2 ;;
		--label) need_value "$@"; LABEL=$2; shift 2 ;;
		--from) need_value "$@"; FROM=$2; shift 2 ;;
		--python) need_value "$@"; PYTHON=$2; shift 2 ;;
		--prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
		--config-dir) need_value "$@"; CONFIG_DIR=$2; shift 2 ;;
		--state-dir) need_value "$@"; STATE_DIR=$2; shift 2 ;;
		--root) need_value "$@"; ROOT=$2; shift 2 ;;
		--no-systemd) SYSTEMD=0; shift ;;
		--no-start) START=0; shift ;;
		--force) FORCE=1; shift ;;
		-h | --help) usage; exit 0 ;;
		*) die "unknown option ${1%%=*} (see --help)" ;;
		esac
	done
	local dir
	for dir in "$PREFIX" "$CONFIG_DIR" "$STATE_DIR"; do
		case "$dir" in
		/*) ;;
		*) die "$dir: --prefix, --config-dir and --state-dir take absolute paths" ;;
		esac
	done
	PREFIX=${PREFIX%/} CONFIG_DIR=${CONFIG_DIR%/} STATE_DIR=${STATE_DIR%/}
	for dir in "$PREFIX" "$CONFIG_DIR" "$STATE_DIR"; do
		case "$dir" in
		*[[:space:]#]*) die "$dir: paths with spaces or '#' are not supported" ;;
		"" | /etc | /var | /var/lib | /opt | /usr | /usr/local | /home | /root | /tmp | /run | /srv)
			die "${dir:-/}: give dc-agent a directory of its own (its mode is set to 0700)" ;;
		esac
	done

	# --- where things go ----------------------------------------------------------------------
	if [ -n "$ROOT" ]; then
		mkdir -p "$ROOT" || die "--root $ROOT: cannot create it"
		ROOT=$(cd "$ROOT" && pwd)
		[ "$ROOT" != / ] || ROOT=""
	fi
	if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
		die "run as root: curl -sSL …/install.sh | sudo bash -s -- --token TOKEN (or pass --root DIR to install into a directory)"
	fi
	local venv=$ROOT$PREFIX/venv
	local config_dir=$ROOT$CONFIG_DIR
	local config=$config_dir/config.toml
	local state_dir=$ROOT$STATE_DIR
	local unit_dir=$ROOT/etc/systemd/system
	umask 022

	local spec=dc-agent
	if [ -n "$FROM" ]; then
		[ -e "$FROM" ] || die "--from $FROM: no such file or directory (a checkout or a .whl)"
		if [ -d "$FROM" ]; then
			[ -f "$FROM/pyproject.toml" ] || die "--from $FROM: not a dc-agent checkout (no pyproject.toml)"
			spec=$(cd "$FROM" && pwd)
		else
			case "$FROM" in
			*.whl) spec=$(cd "$(dirname "$FROM")" && pwd)/$(basename "$FROM") ;;
			*) die "--from $FROM: expected a checkout directory or a .whl file" ;;
			esac
		fi
	fi

	if [ "$TOKEN_GIVEN" -eq 0 ] && [ -n "${DC_AGENT_SETUP_TOKEN:-}" ]; then
		TOKEN=$DC_AGENT_SETUP_TOKEN TOKEN_GIVEN=1
	fi
	local keep_config=0
	if [ -f "$config" ] && [ "$FORCE" -eq 0 ]; then
		keep_config=1
	elif [ "$TOKEN_GIVEN" -eq 0 ] || [ -z "$TOKEN" ]; then
		die "--token TOKEN is required for a first install (copy it from the provider UI's agent pool page)"
	fi

	# --- Python and the venv ------------------------------------------------------------------
	find_python
	"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
		|| die "$PYTHON cannot create virtual environments: install the venv module (Debian/Ubuntu: apt-get install python3-venv)"
	local want_base have_base=""
	want_base=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
	case "$want_base" in
	/root/* | /home/*)
		# The unit has ProtectHome=yes: the service could not even exec such a Python (203/EXEC).
		if [ "$SYSTEMD" -eq 1 ] && [ -z "$ROOT" ]; then
			die "$PYTHON is installed in $want_base, which the service cannot see (ProtectHome=yes); pass --python with a system Python, e.g. --python /usr/bin/python3"
		fi
		;;
	esac
	if [ -x "$venv/bin/python" ]; then
		have_base=$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null) || have_base=""
	fi
	# Reuse the venv if it works and is built on the same Python; otherwise make it anew (it holds
	# nothing but the package).
	if [ "$have_base" = "$want_base" ] && python_ok "$venv/bin/python" \
		&& "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
		say "upgrading the venv in $venv"
	else
		say "creating a venv in $venv with $("$PYTHON" -V 2>&1)"
		mkdir -p "$(dirname "$venv")"
		"$PYTHON" -m venv --clear "$venv" || die "could not create the venv in $venv"
	fi
	if [ -n "$FROM" ]; then
		say "installing dc-agent from $spec"
	else
		say "installing dc-agent from the package index"
	fi
	# --upgrade: the newest release from the index; a checkout is always rebuilt and reinstalled; a
	# wheel whose version is already installed is skipped (same version, same wheel).
	PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --no-input --upgrade "$spec" \
		|| die "pip could not install $spec into $venv (see pip's message above)"
	local agent=$venv/bin/dc-agent
	[ -x "$agent" ] || die "$agent is missing after pip install: is $spec the dc-agent package?"
	local version
	version=$("$agent" --version 2>/dev/null) || die "$agent --version failed: the install is broken; re-run with --force or remove $venv"
	say "installed $version"

	# --- config, key, state -------------------------------------------------------------------
	mkdir -p "$config_dir" "$state_dir"
	chmod 0700 "$config_dir" "$state_dir"
	if [ "$keep_config" -eq 1 ]; then
		say "keeping the existing config $config (setup not run again; --force to register anew)"
		local ignored=""
		[ "$TOKEN_GIVEN" -eq 0 ] || ignored+=" --token"
		[ -z "$API_URL" ] || ignored+=" --api-url"
		[ -z "$LABEL" ] || ignored+=" --label"
		[ "$STATE_DIR" = "$DEFAULT_STATE_DIR" ] || ignored+=" --state-dir"
		[ -z "$ignored" ] || warn "not applied to the existing config:$ignored (the token was not used)"
	else
		# The token goes through the environment (DC_AGENT_SETUP_TOKEN), not setup's command line.
		local -a setup=("$agent" setup --config "$config" --state-dir "$state_dir")
		[ -z "$API_URL" ] || setup+=(--api-url "$API_URL")
		[ -z "$LABEL" ] || setup+=(--label "$LABEL")
		[ "$FORCE" -eq 0 ] || setup+=(--force)
		say "registering this agent with the pool (dc-agent setup)"
		# setup's own "Next steps" are left out: the installer prints its own at the end.
		DC_AGENT_SETUP_TOKEN=$TOKEN "${setup[@]}" | sed '/^Next steps:/,$d' \
			|| die "dc-agent setup failed (its message is above); nothing was registered. Fix that and run the installer again"
		[ -f "$config" ] || die "dc-agent setup succeeded but wrote no $config"
	fi
	local file
	for file in "$config" "$config_dir/agent.key"; do
		[ ! -f "$file" ] || chmod 0600 "$file"
	done

	# --- the command on PATH and the unit -----------------------------------------------------
	local link=$ROOT/usr/local/bin/dc-agent
	mkdir -p "$(dirname "$link")"
	if [ -L "$link" ] || [ ! -e "$link" ]; then
		ln -sfn "$PREFIX/venv/bin/dc-agent" "$link"
	else
		warn "$link exists and is not a symlink: left alone (run $PREFIX/venv/bin/dc-agent)"
	fi

	mkdir -p "$unit_dir"
	local tmp_unit
	tmp_unit=$(mktemp "$unit_dir/.$UNIT_NAME.XXXXXX")
	unit_text | sed -e "s#/opt/dc-agent/venv/bin/dc-agent#$PREFIX/venv/bin/dc-agent#" \
		-e "s#--config /etc/dc-agent/config.toml#--config $CONFIG_DIR/config.toml#" >"$tmp_unit"
	chmod 0644 "$tmp_unit"
	mv -f "$tmp_unit" "$unit_dir/$UNIT_NAME"
	say "installed $unit_dir/$UNIT_NAME"
	local dropin_dir=$unit_dir/$UNIT_NAME.d
	if [ "$STATE_DIR" != "$DEFAULT_STATE_DIR" ] || [ "$CONFIG_DIR" != "$DEFAULT_CONFIG_DIR" ]; then
		# Paths outside the unit's ConfigurationDirectory/StateDirectory: tell the agent, and let it write.
		mkdir -p "$dropin_dir"
		# The config names the state directory (setup --state-dir); the sandbox must let the agent write it.
		printf '%s\n' "# Written by install.sh for --state-dir/--config-dir outside the defaults." "[Service]" \
			"ReadWritePaths=$STATE_DIR" >"$dropin_dir/paths.conf"
		chmod 0644 "$dropin_dir/paths.conf"
	elif [ -f "$dropin_dir/paths.conf" ]; then
		rm -f "$dropin_dir/paths.conf"
	fi

	# --- systemd --------------------------------------------------------------------------------
	local service_state="installed, not enabled (--no-systemd)"
	if [ "$SYSTEMD" -eq 1 ]; then
		if [ -n "$ROOT" ]; then
			if command -v systemctl >/dev/null 2>&1; then
				systemctl --root="$ROOT" --quiet enable "$UNIT_NAME" || die "systemctl --root=$ROOT enable $UNIT_NAME failed"
				service_state="enabled under $ROOT (not started: --root)"
			else
				service_state="installed, not enabled (no systemctl here)"
			fi
		elif ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
			warn "systemd is not running here: the unit is installed but not started; use --no-systemd in containers and run: $PREFIX/venv/bin/dc-agent run --config $CONFIG_DIR/config.toml"
			service_state="installed, not started (systemd is not running)"
		else
			systemctl daemon-reload || die "systemctl daemon-reload failed"
			systemctl --quiet enable "$UNIT_NAME" || die "systemctl enable $UNIT_NAME failed"
			if [ "$START" -eq 1 ]; then
				# restart: a fresh install starts, an upgrade drains the old agent and runs the new one
				if systemctl restart "$UNIT_NAME" 2>/dev/null; then
					service_state="enabled and running"
				elif [ "$(systemctl show -p ExecMainStatus --value "$UNIT_NAME")" = 78 ]; then
					# EX_CONFIG: expected right after setup, until the provisioner is configured.
					warn "dc-agent is enabled but not running: its config is not complete yet. It said:"
					journalctl -u "$UNIT_NAME" _PID="$(systemctl show -p ExecMainPID --value "$UNIT_NAME")" \
						-n 3 --no-pager -o cat >&2 || true
					service_state="enabled, waiting for the provisioner to be configured (step 1 below)"
				else
					die "dc-agent did not start; see: journalctl -u dc-agent -n 50 --no-pager"
				fi
			else
				service_state="enabled, not started (--no-start)"
			fi
		fi
	fi

	cat <<EOF

dc-agent is installed ($version).
  config:   $config (0600; the key is next to it)
  state:    $state_dir
  program:  $venv/bin/dc-agent (also $link)
  service:  $unit_dir/$UNIT_NAME: $service_state

EOF
	if [ "$keep_config" -eq 0 ]; then
		cat <<EOF
Next steps:
  1. Choose and configure the provisioner in $CONFIG_DIR/config.toml ([provisioner] type and its
     [provisioner.<type>] table; see the README's configuration reference).
     A script provisioner may need the sandbox relaxed: see the README, "Install as a systemd
     service", and systemd/script-provisioner.conf.example.
  2. sudo systemctl restart dc-agent
  3. sudo dc-agent status            # API reachable, signature accepted, provisioner health
     journalctl -u dc-agent -f       # the agent's log
EOF
	else
		cat <<EOF
Check it:
  sudo dc-agent status               # API reachable, signature accepted, provisioner health
  journalctl -u dc-agent -f          # the agent's log
EOF
	fi
}

main "$@"
