#!/usr/bin/env bash
# The README's test command: make .venv, install the project with its test extras, run pytest.
# PostgreSQL binaries (postgresql-15 or newer) must be installed; the tests start their own cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 && [ -z "${PG_BIN:-}" ]; then
  echo "PostgreSQL binaries not found; installing them with apt-get" >&2
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"
exec pytest "$@"
