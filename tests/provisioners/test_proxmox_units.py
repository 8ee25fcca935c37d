"""The Proxmox driver's pure parts: settings, contract marks, sshkeys, disk and address picking."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from provisioners.base import ConfigError
from provisioners.proxmox_config import parse_settings
from provisioners.proxmox_guest import (
    attempt_of_description,
    boot_disk,
    contract_from_tag,
    contract_of_description,
    contract_of_tags,
    contract_tag,
    description,
    encode_sshkeys,
    merge_tags,
    net_mac,
    pick_addresses,
    vm_name,
    wants_ipv4,
    with_bridge,
)

SECRET = "5e1d0c2b-aaaa-bbbb-cccc-0123456789ab"


def base(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"api_url": "https://pve1.example.net:8006", "api_token_id": "dc-agent@pve!provisioning",
                           "api_token_secret": SECRET, "node": "pve1", "template_vmid": 9000, "storage": "local-lvm"}
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


class TestSettings:
    def test_defaults(self) -> None:
        cfg = parse_settings(base())
        assert (cfg.host, cfg.port, cfg.token_user, cfg.token_name) == ("pve1.example.net", 8006, "dc-agent@pve",
                                                                         "provisioning")
        assert cfg.verify is True and cfg.full_clone is True and cfg.ipconfig0 == "ip=dhcp"
        assert cfg.ip_timeout == 300 and cfg.task_timeout == 900 and cfg.vmid_range is None
        assert SECRET not in repr(cfg)

    def test_port_defaults_to_8006(self) -> None:
        assert parse_settings(base(api_url="https://pve1.example.net")).port == 8006

    @pytest.mark.parametrize(("overrides", "key"), [
        ({"api_url": None}, "api_url"),
        ({"api_url": "http://pve1:8006"}, "api_url"),
        ({"api_url": "https://pve1:8006/api2/json"}, "api_url"),
        ({"api_token_id": "dc-agent@pve"}, "api_token_id"),
        ({"api_token_id": "dc-agent!tok"}, "api_token_id"),
        ({"api_token_secret": None}, "api_token_secret"),
        ({"node": None}, "node"),
        ({"node": "pve 1"}, "node"),
        ({"template_vmid": None}, "template_vmid"),
        ({"template_vmid": 42}, "template_vmid"),
        ({"template_vmid": "abc"}, "template_vmid"),
        ({"storage": None}, "storage"),
        ({"full_clone": False}, "storage"),
        ({"verify_tls": "yes"}, "verify_tls"),
        ({"verify_tls": False, "ca_cert": "/etc/ssl/x.pem"}, "ca_cert"),
        ({"ca_cert": "/nonexistent.pem"}, "ca_cert"),
        ({"ip_timeout_seconds": 0}, "ip_timeout_seconds"),
        ({"task_timeout_seconds": "10"}, "task_timeout_seconds"),
        ({"vmid_range": [2000, 1000]}, "vmid_range"),
        ({"vmid_range": "1000"}, "vmid_range"),
        ({"vmid_range": [50, 1000]}, "vmid_range"),
        ({"templte_vmid": 9000}, "templte_vmid"),
        ({"max_parallel_clones": 0}, "max_parallel_clones"),
    ])
    def test_errors_name_the_key(self, overrides: dict[str, Any], key: str) -> None:
        settings = base()
        settings.update(overrides)
        settings = {k: v for k, v in settings.items() if v is not None}
        with pytest.raises(ConfigError) as err:
            parse_settings(settings)
        assert str(err.value).startswith(f"[provisioner.proxmox] {key}: ")
        assert SECRET not in str(err.value)

    def test_secret_and_secret_file_exclusive(self, tmp_path: Path) -> None:
        (tmp_path / "s").write_text("x")
        with pytest.raises(ConfigError, match="api_token_secret: is set together with api_token_secret_file"):
            parse_settings(base(api_token_secret_file=str(tmp_path / "s")))

    def test_secret_file_relative_to_config(self, tmp_path: Path) -> None:
        (tmp_path / "pve.secret").write_text(f"  {SECRET}\n")
        cfg = parse_settings(base(api_token_secret=None, api_token_secret_file="pve.secret"),
                             tmp_path / "config.toml")
        assert cfg.token_secret == SECRET

    def test_secret_file_missing_or_empty(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"api_token_secret_file: cannot read"):
            parse_settings(base(api_token_secret=None, api_token_secret_file="nope"), tmp_path / "c.toml")
        (tmp_path / "empty").write_text("\n")
        with pytest.raises(ConfigError, match=r"api_token_secret_file: .* is empty"):
            parse_settings(base(api_token_secret=None, api_token_secret_file="empty"), tmp_path / "c.toml")

    def test_ca_cert_relative_to_config(self, tmp_path: Path) -> None:
        (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        cfg = parse_settings(base(ca_cert="ca.pem"), tmp_path / "config.toml")
        assert cfg.verify == str(tmp_path / "ca.pem")

    def test_vmid_range_forms(self) -> None:
        assert parse_settings(base(vmid_range=[10000, 10999])).vmid_range == (10000, 10999)
        assert parse_settings(base(vmid_range="10000-10999")).vmid_range == (10000, 10999)

    def test_linked_clones_need_no_storage(self) -> None:
        cfg = parse_settings(base(storage=None, full_clone=False))
        assert cfg.storage is None and cfg.full_clone is False

    def test_ipv6_literal(self) -> None:
        cfg = parse_settings(base(api_url="https://[2001:db8::10]:8006"))
        assert cfg.host == "[2001:db8::10]" and cfg.api_url == "https://[2001:db8::10]:8006"


class TestContractMarks:
    @pytest.mark.parametrize("cid", ["ctr-0001", "3f2a9c0d-1b7e-4f5a-9c3d-2e1f0a9b8c7d", "ABC", "a b/c:d",
                                     "ü+x", "x_y.z"])
    def test_tag_round_trip(self, cid: str) -> None:
        tag = contract_tag(cid)
        assert tag.startswith("dc-contract-")
        assert all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_+.-" for ch in tag)
        assert contract_from_tag(tag) == cid

    def test_distinct_ids_distinct_tags(self) -> None:
        assert contract_tag("ABC") != contract_tag("abc")

    def test_ours_needs_the_agent_tag(self) -> None:
        assert contract_of_tags("dc-agent;dc-contract-c1") == "c1"
        assert contract_of_tags("dc-contract-c1") is None
        assert contract_of_tags("web;prod") is None
        assert contract_of_tags(None) is None
        assert contract_from_tag("dc-contract-") is None and contract_from_tag("dc-contract-+zz") is None

    def test_merge_tags(self) -> None:
        assert merge_tags("template;dc-agent", "dc-agent", "dc-contract-x") == "template;dc-agent;dc-contract-x"
        assert merge_tags(None, "dc-agent") == "dc-agent"

    @pytest.mark.parametrize(("cid", "name"), [
        ("ctr-0001", "dc-ctr-0001"), ("ABC_def", "dc-abc-def"), ("---", "dc-contract"),
        ("x" * 100, "dc-" + "x" * 60),
    ])
    def test_vm_name_is_a_dns_label(self, cid: str, name: str) -> None:
        assert vm_name(cid) == name
        assert len(vm_name(cid)) <= 63

    def test_description_round_trip(self) -> None:
        text = description("ctr 7", "a1b2")
        assert contract_of_description(text) == "ctr 7" and attempt_of_description(text) == "a1b2"
        assert contract_of_description("hello") is None and attempt_of_description("hello") is None


class TestSshKeys:
    def test_strict_percent_encoding(self) -> None:
        keys = "ssh-ed25519 AAAA+/= a@b\r\n\n  ssh-rsa BBBB:x c@d  \n"
        encoded = encode_sshkeys(keys)
        assert encoded == "ssh-ed25519%20AAAA%2B%2F%3D%20a%40b%0Assh-rsa%20BBBB%3Ax%20c%40d"
        assert urllib.parse.unquote(encoded) == "ssh-ed25519 AAAA+/= a@b\nssh-rsa BBBB:x c@d"


class TestConfigValues:
    def test_boot_disk_follows_boot_order(self) -> None:
        config = {"boot": "order=virtio1;ide2;net0", "scsi0": "local:vm-1-disk-0,size=8G",
                  "virtio1": "local:vm-1-disk-1,size=2252M", "ide2": "local:cloudinit,media=cdrom"}
        assert boot_disk(config) == ("virtio1", 2252 * 1024**2)

    def test_boot_disk_without_order_skips_cdroms(self) -> None:
        config = {"ide0": "local:iso/x.iso,media=cdrom", "sata0": "local:vm-1-disk-0,size=1T",
                  "scsi1": "local:vm-1-disk-1,size=10G"}
        assert boot_disk(config) == ("scsi1", 10 * 1024**3)
        assert boot_disk({"net0": "virtio"}) is None

    def test_net(self) -> None:
        assert net_mac("virtio=BC:24:11:4D:16:43,bridge=vmbr0") == "bc:24:11:4d:16:43"
        assert net_mac("model=virtio,macaddr=BC:24:11:00:00:01") == "bc:24:11:00:00:01"
        assert net_mac("virtio,bridge=vmbr0") is None
        assert with_bridge("virtio=BC:24:11:4D:16:43,bridge=vmbr0,firewall=1", "vmbr9") == \
            "virtio=BC:24:11:4D:16:43,bridge=vmbr9,firewall=1"

    def test_wants_ipv4(self) -> None:
        assert wants_ipv4("ip=dhcp") and wants_ipv4("ip=dhcp,ip6=auto") and wants_ipv4("gw=1.2.3.4")
        assert not wants_ipv4("ip6=auto")


def iface(name: str, mac: str, *addrs: str) -> dict[str, Any]:
    return {"name": name, "hardware-address": mac,
            "ip-addresses": [{"ip-address": a, "ip-address-type": "ipv6" if ":" in a else "ipv4"} for a in addrs]}


class TestAddresses:
    def test_skips_loopback_link_local_and_docker(self) -> None:
        data = [iface("lo", "00:00:00:00:00:00", "127.0.0.1", "::1"),
                iface("docker0", "02:42:ac:11:00:01", "172.17.0.1"),
                iface("eth0", "bc:24:11:00:00:01", "fe80::1", "169.254.3.3", "203.0.113.7", "2001:db8::7")]
        assert pick_addresses(data, "bc:24:11:00:00:01") == ("203.0.113.7", "2001:db8::7")

    def test_prefers_net0_mac(self) -> None:
        data = [iface("ens19", "bc:24:11:00:00:02", "10.9.9.9"),
                iface("ens18", "BC:24:11:00:00:01", "198.51.100.4")]
        assert pick_addresses(data, "bc:24:11:00:00:01")[0] == "198.51.100.4"
        assert pick_addresses(data, None)[0] == "10.9.9.9"

    def test_global_ipv6_before_unique_local(self) -> None:
        data = [iface("eth0", "m", "fd00::5", "2a01:4f8::5")]
        assert pick_addresses(data, None) == (None, "2a01:4f8::5")

    def test_nothing_usable(self) -> None:
        assert pick_addresses([iface("eth0", "m", "fe80::1")], None) == (None, None)
        assert pick_addresses(None, None) == (None, None)
        assert pick_addresses([{"name": "eth0"}, "junk"], None) == (None, None)
