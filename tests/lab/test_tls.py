"""TLS as the real servers enforce it on the program's certificates: mTLS for admins, SANs for every dialed address."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path

import pytest
from helpers import settings_for

from components.endpoints import SERVERS, dials

pytestmark = pytest.mark.lab

DIALED = sorted({(d.server, d.host) for d in dials(settings_for("swtpm"))})
# Addresses no client is configured with: a name beside the real ones, and an address beside 127.0.0.1.
UNLISTED = ("keylime-unlisted.keylime.svc.cluster.local", "127.0.0.2")
# An admin-only route of both servers' APIs (the tenant's own API version).
ADMIN_PATH = "/v2.6/agents/"


def tls_port(infra, server: str) -> int:
    return infra.port(server, "https")


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def handshake(port: int, name: str, context: ssl.SSLContext) -> dict | None:
    """Connect to 127.0.0.1, verify the server as `name` (certificate chain and SAN), return its certificate."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()


def admin_get(port: int, context: ssl.SSLContext, name: str = "127.0.0.1") -> int:
    """The status of an admin request to 127.0.0.1:`port`, the server verified as `name`."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET {ADMIN_PATH} HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode())
            response = http.client.HTTPResponse(tls)
            response.begin()
            return response.status


def client_tls_files(infra, component: str) -> tuple[Path, Path, Path]:
    """(CA, client certificate, client key) a component's config makes it use as a TLS client."""
    return infra.client_tls_files(component)


def logged_json(output: str, marker: str) -> dict:
    """The JSON document keylime_tenant logs alone on the line after `marker`."""
    return json.loads(output.split(marker, 1)[1].split("\n", 2)[1])


@pytest.mark.parametrize("command,server,key", [("reglist", "registrar", "registrar_ip"), ("cvlist", "verifier", "verifier_ip")])
def test_the_tenant_lists_agents_over_mtls_at_the_configured_service_name(infra, command, server, key):
    result = infra.tenant("-c", command)
    assert result.returncode == 0, result.stdout + result.stderr
    # The tenant dialed the in-cluster name from its config, and verified the server's certificate for it.
    marker = f"Agent list from {server.capitalize()} ({infra.declared_option('tenant', key)}:"
    assert marker in result.stdout, result.stdout
    assert "uuids" in logged_json(result.stdout, marker)


@pytest.mark.parametrize("server", SERVERS)
def test_the_admin_api_refuses_a_client_without_a_certificate(infra, server):
    ca, cert, key = client_tls_files(infra, "tenant")
    port = tls_port(infra, server)
    assert admin_get(port, client_context(ca, cert, key)) == 200  # the route is right, and the tenant may use it
    try:
        status = admin_get(port, client_context(ca))
    except (ssl.SSLError, ConnectionError):
        return  # refused during the handshake
    assert status == 403


def test_the_registrar_admits_the_verifier_as_its_config_dials_it(infra):
    # The verifier fetches agents' keys from the registrar: its name and port, its client certificate.
    ca, cert, key = client_tls_files(infra, "verifier")
    name, port = infra.option("verifier", "registrar_ip"), int(infra.option("verifier", "registrar_port"))
    assert admin_get(port, client_context(ca, cert, key), name) == 200


@pytest.mark.parametrize("server,name", DIALED, ids=[f"{server}-{name}" for server, name in DIALED])
def test_a_client_verifying_like_the_agent_accepts_every_address_it_may_dial(infra, agent_ca, server, name):
    certificate = handshake(tls_port(infra, server), name, client_context(agent_ca))
    # verified: chain to the program's CA, and `name` among the SANs (so the peer certificate is never None)
    assert certificate["subject"]  # type: ignore[index]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("name", UNLISTED)
def test_a_client_verifying_like_the_agent_refuses_an_address_outside_the_sans(infra, agent_ca, server, name):
    assert (server, name) not in DIALED
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(tls_port(infra, server), name, client_context(agent_ca))
