"""The Rust dc-agent 0.6's script protocol (`[provisioner.script] protocol = "rust"`), as translation only.

What the Rust agent (dc-agent/src/provisioner/script.rs) sends and expects, and what we send and read:

* stdin, one JSON object with an `action`:
  `provision`: `{"action": "provision", "contract_id", "offering_id", "cpu_cores", "memory_mb",
  "storage_gb", "requester_ssh_pubkey", "instance_config", "post_provision_script", "external_id": null}`
  (its ProvisionRequest flattened, snake_case) to the `provision` script (our `command`);
  `terminate`: `{"action": "terminate", "external_id"}` to the `terminate` script (`terminate_command`);
  `health_check`: `{"action": "health_check", "external_id"}` to the `health_check` script (`health_command`).
* stdout, one JSON object: `{"success": bool, "instance": {...} | null, "health": {...} | null,
  "error": str | null, "retry_possible": bool | null}`; a non-zero exit is a failure with its stderr.
* `instance`: `external_id`, `ip_address`, `ipv6_address`, `ssh_port`, `root_password`, `public_ip`,
  `additional_details`, `gateway_slug`, `gateway_subdomain`, `gateway_ssh_port`,
  `gateway_port_range_start`, `gateway_port_range_end`. The last seven have no place in our
  InstanceDetails and go to its `extra` under these names, so that the live dialect can send them on.
* `health`: `{"status": "healthy", "uptime_seconds"}`, `{"status": "unhealthy", "reason"}`, `{"status": "unknown"}`.

Not in the Rust protocol: a look-up by contract (its `get_instance` asks the provision script by
`external_id`, which the agent does not know after a crash), a listing, stop/start, passwords, keys.
"""

from __future__ import annotations

from typing import Any

from provisioners.base import Contract, InstanceDetails, InstanceHealth, ProvisionError
from provisioners.process import json_output

EXTRA_FIELDS = ("public_ip", "additional_details", "gateway_slug", "gateway_subdomain", "gateway_ssh_port",
                "gateway_port_range_start", "gateway_port_range_end")
REPLY_SHAPE = '{"success": true|false, "instance": {...}, "error": "...", "retry_possible": true|false}'


def provision_input(contract: Contract) -> dict[str, Any]:
    """The provision request as the Rust agent writes it to the script's stdin."""
    return {
        "action": "provision",
        "contract_id": contract.contract_id,
        "offering_id": contract.offering_id,
        "cpu_cores": contract.cpu_cores,
        "memory_mb": contract.memory_mb,
        "storage_gb": contract.storage_gb,
        "requester_ssh_pubkey": contract.requester_ssh_pubkey,
        "instance_config": contract.instance_config,
        # The live API's contracts carry it; ours do not (yet): None then, as the Rust agent sends for none.
        "post_provision_script": getattr(contract, "post_provision_script", None),
        "external_id": None,
    }


def instance_input(action: str, external_id: str) -> dict[str, Any]:
    """`terminate` / `health_check` input: the action and the instance, nothing of a contract."""
    return {"action": action, "external_id": external_id}


def reply(stdout: str, what: str) -> dict[str, Any]:
    """The script's reply object; `success: false` raises ProvisionError with its `error` text.

    `retry_possible: false` makes the error not retryable (`ProvisionError.retryable`): the script
    says another attempt cannot help.
    """
    snippet = stdout.strip()[:200] or "nothing"
    try:
        data = json_output(stdout)  # the Rust agent takes only the whole of stdout: a superset
    except ValueError:
        raise ProvisionError(f"{what} exited 0 but its stdout is not the Rust protocol's JSON reply "
                             f"{REPLY_SHAPE} (got: {snippet!r})") from None
    if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
        raise ProvisionError(f"{what} printed JSON without a true/false \"success\"; the Rust protocol's reply "
                             f"is {REPLY_SHAPE} (got: {snippet!r})")
    if not data["success"]:
        from dc_common.redact import redact_text

        retry = data.get("retry_possible")
        text = redact_text(str(data.get("error") or "no error text"))[:1500]
        raise ProvisionError(f"{what} reported failure: {text}"
                             + (" (the script says a retry is possible)" if retry is True else ""),
                             retryable=retry is not False)
    return data


def instance_details(data: dict[str, Any], what: str) -> InstanceDetails:
    """Our InstanceDetails from a successful reply's `instance`."""
    instance = data.get("instance")
    if not isinstance(instance, dict):
        raise ProvisionError(f"{what} succeeded but did not return instance details (\"instance\": "
                             f"{{\"external_id\": ..., \"ip_address\": ..., \"ssh_port\": 22}})")
    external_id = instance.get("external_id")
    if isinstance(external_id, bool) or not isinstance(external_id, (str, int)) or str(external_id) == "":
        raise ProvisionError(f"{what} returned an instance without \"external_id\"")
    port = instance.get("ssh_port", 22)
    if port is None:
        port = 22
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ProvisionError(f"{what} returned \"ssh_port\": {port!r}; it must be a port number 1-65535")
    for key in ("ip_address", "ipv6_address", "root_password"):
        if instance.get(key) is not None and not isinstance(instance[key], str):
            raise ProvisionError(f"{what} returned \"{key}\" that is not a string")
    return InstanceDetails(
        external_id=str(external_id),
        provisioner="script",
        ip_address=instance.get("ip_address"),
        ipv6_address=instance.get("ipv6_address"),
        ssh_port=port,
        root_password=instance.get("root_password"),
        extra={key: instance[key] for key in EXTRA_FIELDS if instance.get(key) is not None},
    )


def instance_health(data: dict[str, Any], what: str) -> InstanceHealth:
    """Our InstanceHealth from a successful reply's `health`."""
    health = data.get("health")
    status = health.get("status") if isinstance(health, dict) else None
    if status == "healthy":
        uptime = health.get("uptime_seconds")  # type: ignore[union-attr]
        return InstanceHealth("healthy", f"up {uptime} s" if isinstance(uptime, int) else "")
    if status == "unhealthy":
        return InstanceHealth("unhealthy", str(health.get("reason") or "")[:500])  # type: ignore[union-attr]
    if status == "unknown":
        return InstanceHealth("unknown", "the health_check script does not know")
    return InstanceHealth("unknown", f"{what} did not return a health status (\"health\": {{\"status\": "
                                     f"\"healthy\"|\"unhealthy\"|\"unknown\"}})")
