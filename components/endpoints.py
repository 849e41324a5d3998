"""Every address a client dials to reach the registrar or the verifier: the one source of truth.

The server certificates take their SANs from `dials()`, and the agent, tenant and verifier
configurations take their addresses from the same list, so a client cannot be configured to dial a
name its server's certificate does not carry.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Literal

from components.settings import Settings, is_ip_address

Server = Literal["registrar", "verifier"]
SERVERS: tuple[Server, ...] = ("registrar", "verifier")

KEYLIME_NAMESPACE = "keylime"

REGISTRAR_PORT = 8890
REGISTRAR_TLS_PORT = 8891
VERIFIER_PORT = 8881
SERVICE_NAMES: dict[Server, str] = {"registrar": "keylime-registrar", "verifier": "keylime-verifier"}


@dataclasses.dataclass(frozen=True)
class Dial:
    """One client's way to one server."""

    client: str
    server: Server
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def service_fqdn(server: Server) -> str:
    return f"{SERVICE_NAMES[server]}.{KEYLIME_NAMESPACE}.svc.cluster.local"


def infra_cluster_name(settings: Settings) -> str:
    """Kind cluster names are per stack: two stacks never share (or destroy) one another's clusters."""
    return f"keylime-{settings.stack}-infra"


def agent_cluster_name(settings: Settings, index: int) -> str:
    return f"keylime-{settings.stack}-agents-{index}"


def kind_node(cluster: str) -> str:
    """Kind names a one-node cluster's node container `<cluster>-control-plane`. Every Kind cluster joins the
    `kind` Docker network, whose DNS resolves that name from pods of the other clusters too; a name, unlike
    the node's IP, is known before the cluster exists, so certificates and previews do not depend on the machine."""
    return f"{cluster}-control-plane"


def network_host_address(network_cidr: str) -> str:
    """The host's address on a libvirt NAT network: the network's first address, its gateway."""
    return str(next(ipaddress.ip_network(network_cidr).hosts()))


def vm_host_address(settings: Settings) -> str:
    return network_host_address(settings.vm_network_cidr)


def agent_facing_host(settings: Settings) -> str:
    """Where agents find the registrar and the verifier from outside the servers' cluster."""
    if settings.tpm_mode == "cluster":
        assert settings.advertised_address is not None, "the cluster stack requires advertisedAddress"
        return settings.advertised_address
    return kind_node(infra_cluster_name(settings)) if settings.tpm_mode == "swtpm" else vm_host_address(settings)


def agent_facing_ports(settings: Settings) -> dict[str, int]:
    """The ports behind agent_facing_host: a LoadBalancer's are the Services' own, otherwise the NodePorts."""
    if settings.tpm_mode == "cluster" and settings.service_type == "LoadBalancer":
        return {"registrar": REGISTRAR_PORT, "registrar-tls": REGISTRAR_TLS_PORT, "verifier": VERIFIER_PORT}
    return {
        "registrar": settings.registrar_node_port,
        "registrar-tls": settings.registrar_tls_node_port,
        "verifier": settings.verifier_node_port,
    }


def host_port_address(settings: Settings) -> str:
    """The one host address the infra node publishes its NodePorts on. Agent Kind clusters reach the node over
    the `kind` Docker network, so swtpm needs loopback only; the VM dials the host on its libvirt network.
    Never 0.0.0.0: Docker's rules bypass host firewalls, and every outside client would share the per-IP
    session limit with the fleet."""
    return "127.0.0.1" if settings.tpm_mode == "swtpm" else vm_host_address(settings)


def dials(settings: Settings) -> tuple[Dial, ...]:
    """Every (client, server, address) the deployment uses, in a stable order."""
    agent_host, outside = agent_facing_host(settings), agent_facing_ports(settings)
    found = [
        # Agents register over plain HTTP (registration is public) and attest over TLS.
        Dial("agent", "registrar", agent_host, outside["registrar"], tls=False),
        Dial("agent", "verifier", agent_host, outside["verifier"], tls=True),
        # Inside the infra cluster: the tenant, and the verifier fetching agent keys from the registrar.
        Dial("tenant", "registrar", service_fqdn("registrar"), REGISTRAR_TLS_PORT, tls=True),
        Dial("tenant", "verifier", service_fqdn("verifier"), VERIFIER_PORT, tls=True),
        Dial("verifier", "registrar", service_fqdn("registrar"), REGISTRAR_TLS_PORT, tls=True),
        Dial("controller", "registrar", service_fqdn("registrar"), REGISTRAR_TLS_PORT, tls=True),
        Dial("controller", "verifier", service_fqdn("verifier"), VERIFIER_PORT, tls=True),
    ]
    for server in SERVERS:
        # Any in-cluster client may use the short service names that cluster DNS search paths resolve.
        short = SERVICE_NAMES[server]
        port = REGISTRAR_TLS_PORT if server == "registrar" else VERIFIER_PORT
        for name in (short, f"{short}.{KEYLIME_NAMESPACE}", f"{short}.{KEYLIME_NAMESPACE}.svc"):
            found.append(Dial("in-cluster client", server, name, port, tls=True))
        host_port = outside["registrar-tls" if server == "registrar" else "verifier"]
        if settings.tpm_mode == "cluster":
            # An operator anywhere dials the same address as the agents.
            found.append(Dial("operator", server, agent_host, host_port, tls=True))
        else:
            # An operator on the host reaches the NodePorts where Kind's extraPortMappings publish them.
            published = host_port_address(settings)
            for name in ("localhost", published) if published == "127.0.0.1" else (published,):
                found.append(Dial("host operator", server, name, host_port, tls=True))
        for name in settings.extra_sans:
            found.append(Dial("extraSans client", server, name, host_port, tls=True))
    return tuple(found)


def dial(settings: Settings, client: str, server: Server) -> Dial:
    """The one address `client` is configured with for `server`."""
    return next(d for d in dials(settings) if d.client == client and d.server == server)


@dataclasses.dataclass(frozen=True)
class SubjectAltNames:
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


def server_sans(settings: Settings, server: Server) -> SubjectAltNames:
    """Every host any client dials for `server`, split the way X.509 (and pulumi-tls) wants it."""
    hosts = list(dict.fromkeys(d.host for d in dials(settings) if d.server == server))
    return SubjectAltNames(
        dns_names=tuple(h for h in hosts if not is_ip_address(h)),
        ip_addresses=tuple(h for h in hosts if is_ip_address(h)),
    )
