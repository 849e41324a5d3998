"""Every address a client is configured to dial is a SAN of the certificate its server presents."""

from __future__ import annotations

import configparser
import sys
import tomllib
from urllib.parse import urlsplit

import pytest
from helpers import settings_for, under_each_hash_seed

from components import keylime_conf
from components.endpoints import dial, server_sans, vm_host_address


def declared_sans(run, server: str) -> set[str]:
    """The SANs the program actually asks pulumi-tls to put in `server`'s certificate request."""
    csr = run.named(f"pki-{server}-csr").plain
    return set(csr.get("dnsNames", [])) | set(csr.get("ipAddresses", []))


def configured_addresses(settings) -> dict[str, set[str]]:
    """Parse the rendered configuration files and collect every host each one dials, per server."""
    agent = tomllib.loads(keylime_conf.agent_conf(settings))["agent"]
    tenant = configparser.ConfigParser()
    tenant.read_string(keylime_conf.tenant_conf(settings))
    verifier = configparser.ConfigParser()
    verifier.read_string(keylime_conf.verifier_conf(settings))
    return {
        "registrar": {agent["registrar_ip"], tenant["tenant"]["registrar_ip"], verifier["verifier"]["registrar_ip"]},
        "verifier": {urlsplit(agent["verifier_url"]).hostname, tenant["tenant"]["verifier_ip"]},
    }


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
@pytest.mark.parametrize("server", ["registrar", "verifier"])
def test_every_configured_address_is_in_the_declared_certificate(run, stack, server):
    extra = ["attest.example.org", "203.0.113.7"]
    settings = settings_for(stack, extraSans=extra)
    program = run(stack, extraSans=extra)
    sans = declared_sans(program, server)
    assert configured_addresses(settings)[server] <= sans
    assert set(extra) <= sans
    # The host operator dials the NodePorts where they are published: loopback (swtpm), the libvirt host address (hwtpm).
    if stack == "swtpm":
        assert {"localhost", "127.0.0.1"} <= sans
    else:
        assert vm_host_address(settings) in sans and not {"localhost", "127.0.0.1"} & sans


def test_swtpm_agents_dial_the_infra_node_by_its_kind_network_name():
    settings = settings_for("swtpm")
    assert dial(settings, "agent", "registrar").url == "http://keylime-swtpm-infra-control-plane:30890"
    assert dial(settings, "agent", "verifier").url == "https://keylime-swtpm-infra-control-plane:30881"


def test_hwtpm_agents_dial_the_host_on_the_libvirt_network(run):
    settings = settings_for("hwtpm", vmNetworkCidr="10.77.0.0/24")
    assert vm_host_address(settings) == "10.77.0.1"
    assert dial(settings, "agent", "verifier").url == "https://10.77.0.1:30881"
    assert "10.77.0.1" in server_sans(settings, "verifier").ip_addresses
    assert "10.77.0.1" in declared_sans(run("hwtpm", vmNetworkCidr="10.77.0.0/24"), "verifier")


def test_sans_split_ip_addresses_from_dns_names():
    sans = server_sans(settings_for("swtpm", extraSans=["2001:db8::1", "node.example"]), "registrar")
    assert "2001:db8::1" in sans.ip_addresses and "node.example" in sans.dns_names
    assert not set(sans.dns_names) & set(sans.ip_addresses)


def test_a_certificate_carries_only_names_dialed_for_its_own_server():
    settings = settings_for("swtpm")
    assert "keylime-verifier.keylime.svc.cluster.local" not in server_sans(settings, "registrar").dns_names
    assert "keylime-registrar.keylime.svc.cluster.local" not in server_sans(settings, "verifier").dns_names


def test_dials_and_sans_are_listed_in_the_same_order_by_every_process():
    code = ("from helpers import settings_for; from components.endpoints import dials, server_sans; "
            "settings = settings_for('swtpm', extraSans=['a.example', 'b.example', '192.0.2.1', '192.0.2.2']); "
            "print(dials(settings), server_sans(settings, 'registrar'), server_sans(settings, 'verifier'))")
    first, second = under_each_hash_seed([sys.executable, "-c", code])
    assert first == second
    assert "a.example" in first
