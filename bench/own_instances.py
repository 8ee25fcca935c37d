#!/usr/bin/env python3
"""`list_command` for the benchmarks' agents: the instances THIS agent's node made.

`examples/script-provisioner.py list` lists every instance in its directory. The benchmark agents share
one directory (so that `find` lets any agent adopt an instance another one made before a crash, as a
provider's cloud API would), but a hypervisor's agent lists only its own machines: this prints the
example's instances whose `details.node` is `$AGENT_NAME` (the example writes that field), in the
example's format `[{"externalId", "contractId"}, ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    me = os.environ.get("AGENT_NAME", "")
    out = []
    for path in sorted(args.dir.glob("*.json")) if args.dir.exists() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed or being replaced meanwhile
        if data.get("details", {}).get("node") == me:
            out.append({"externalId": data["details"]["externalId"], "contractId": data["contractId"]})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
