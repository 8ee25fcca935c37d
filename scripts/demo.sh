#!/usr/bin/env bash
# The README's demo command: make .venv, install the project, then run examples/demo.py
# (pool_api on a temporary SQLite file, two dc-agent processes with the script provisioner, a few
# contracts, a table of how each was provisioned; everything is stopped and removed at the end).
# Works as root and as a normal user. Options are passed on: --contracts N, --delay S, --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "python3 cannot make a venv; installing python3-venv with apt-get" >&2
      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
      python3 -m venv .venv
    else
      echo "demo: python3 cannot make a venv; install python3-venv (Debian/Ubuntu) and run this again" >&2
      exit 1
    fi
  fi
fi
echo "==> Installing the project into .venv (pip install -e .)"
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -c constraints.txt -e .
exec .venv/bin/python examples/demo.py "$@"
