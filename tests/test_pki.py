"""KeylimePki: curves, key usages, secrecy and the CA's place in the chain, as declared to pulumi-tls."""

from __future__ import annotations

import pulumi
import pulumi_tls as tls
import pytest

from components.endpoints import Server, SubjectAltNames
from components.pki import KeylimePki, KeylimePkiArgs
from tools.offline import ProgramRun, fake_pem, is_secret, run_declarations

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"


def test_every_key_is_ecdsa_p256_not_the_provider_default_p224(swtpm):
    keys = swtpm.of_type(PRIVATE_KEY)
    assert len(keys) == 7  # five leaves, the CA, the TPM manufacturer CA (swtpm)
    assert {(k.plain["algorithm"], k.plain["ecdsaCurve"]) for k in keys} == {("ECDSA", "P256")}


def test_the_ca_signs_certificates_and_nothing_else(swtpm):
    (ca,) = [c for c in swtpm.of_type(SELF_SIGNED) if c.name == "pki-ca"]
    assert ca.plain["isCaCertificate"] is True
    assert set(ca.plain["allowedUses"]) == {"cert_signing", "crl_signing", "digital_signature"}


def test_servers_get_server_auth_and_clients_client_auth(swtpm):
    uses = {cert.name: set(cert.plain["allowedUses"]) for cert in swtpm.of_type(SIGNED)}
    assert uses == {
        "pki-registrar-cert": {"digital_signature", "server_auth"},
        "pki-verifier-cert": {"digital_signature", "server_auth"},
        "pki-tenant-cert": {"digital_signature", "client_auth"},
        "pki-verifier-client-cert": {"digital_signature", "client_auth"},
        "pki-attestation-controller-cert": {"digital_signature", "client_auth"},
    }
    assert not any(cert.plain.get("isCaCertificate") for cert in swtpm.of_type(SIGNED))


def test_every_leaf_is_signed_by_the_ca_key_over_its_own_request(swtpm):
    leaves = swtpm.of_type(SIGNED)
    # registrar, verifier, tenant, verifier-client, attestation-controller
    assert len(leaves) == 5
    for cert in leaves:
        role = cert.name.removeprefix("pki-").removesuffix("-cert")
        assert cert.plain["caCertPem"] == fake_pem("CERTIFICATE", "pki-ca")
        assert cert.plain["caPrivateKeyPem"] == fake_pem("PRIVATE KEY", "pki-ca-key")
        assert cert.plain["certRequestPem"] == fake_pem("CERTIFICATE REQUEST", f"pki-{role}-csr")


def test_private_keys_reach_the_provider_only_as_secrets(swtpm):
    leaves = swtpm.of_type(SIGNED)
    # registrar, verifier, tenant, verifier-client, attestation-controller
    assert len(leaves) == 5
    for cert in leaves:
        assert is_secret(cert.inputs["caPrivateKeyPem"])
    # Each of the 7 keys signs exactly one of these: a CA's self-signed certificate (keylime's, the software
    # TPMs' manufacturer) or a leaf's request.
    key_users = swtpm.of_type("tls:index/certRequest:CertRequest") + swtpm.of_type(SELF_SIGNED)
    assert len(key_users) == len(swtpm.of_type(PRIVATE_KEY)) == 7
    for resource in key_users:
        assert is_secret(resource.inputs["privateKeyPem"])


def test_no_stack_output_carries_a_private_key(swtpm):
    for name, output in swtpm.outputs.items():
        assert "PRIVATE KEY" not in str(output.value), name


def test_the_pki_needs_no_cluster_so_certificates_start_at_once(swtpm):
    pki_urns = {r.urn for r in swtpm.resources if r.parent.endswith("::pki") or r.name == "pki"}
    # The component, its 7 keys, 5 requests, the two CAs and 5 leaves.
    assert len(pki_urns) == 1 + 7 + 5 + 2 + 5
    for resource in swtpm.resources:
        if resource.urn in pki_urns:
            assert all(dep in pki_urns for dep in resource.dependencies), resource.name


# --- KeylimePki alone, from its Args ---------------------------------------------------------------

SANS: dict[Server, SubjectAltNames] = {
    "registrar": SubjectAltNames(dns_names=("registrar.example",), ip_addresses=("10.0.0.1", "2001:db8::1")),
    "verifier": SubjectAltNames(dns_names=("verifier.example", "verifier"), ip_addresses=()),
}


@pytest.fixture(scope="module")
def pki_alone() -> ProgramRun:
    """Only a KeylimePki, with SANs no stack would produce, under its own explicit tls provider."""

    def declare() -> None:
        provider = tls.Provider("tls")
        KeylimePki("alone", KeylimePkiArgs(server_sans=SANS), pulumi.ResourceOptions(providers=[provider]))

    return run_declarations(declare)


def test_alone_each_server_request_carries_exactly_its_args_sans_and_clients_none(pki_alone):
    requests = {r.name: r.plain for r in pki_alone.of_type("tls:index/certRequest:CertRequest")}
    assert set(requests) == {
        "alone-registrar-csr",
        "alone-verifier-csr",
        "alone-tenant-csr",
        "alone-verifier-client-csr",
        "alone-attestation-controller-csr",
    }
    assert (requests["alone-registrar-csr"]["dnsNames"], requests["alone-registrar-csr"]["ipAddresses"]) == (
        ["registrar.example"],
        ["10.0.0.1", "2001:db8::1"],
    )
    assert (requests["alone-verifier-csr"]["dnsNames"], requests["alone-verifier-csr"]["ipAddresses"]) == (
        ["verifier.example", "verifier"],
        [],
    )
    for client in ("tenant", "verifier-client"):
        assert not requests[f"alone-{client}-csr"].get("dnsNames") and not requests[f"alone-{client}-csr"].get("ipAddresses")


def test_alone_the_pki_declares_only_its_own_children_and_signs_with_its_own_ca(pki_alone):
    (component,) = pki_alone.of_type("keylime:pki:KeylimePki")
    tls_resources = [r for r in pki_alone.resources if r.type.startswith("tls:index/")]
    assert len(tls_resources) == 1 + 6 + 5 + 5  # the CA, six keys, five requests, five certificates
    assert {r.parent for r in tls_resources} == {component.urn}
    for cert in pki_alone.of_type(SIGNED):
        assert cert.plain["caCertPem"] == fake_pem("CERTIFICATE", "alone-ca")
        assert is_secret(cert.inputs["caPrivateKeyPem"])


def test_every_certificate_renews_well_before_it_expires(swtpm):
    certificates = swtpm.of_type(SIGNED) + swtpm.of_type(SELF_SIGNED)
    assert len(certificates) == 7  # five leaves, the CA, the TPM manufacturer CA (swtpm)
    for cert in certificates:
        validity, early = cert.plain["validityPeriodHours"], cert.plain.get("earlyRenewalHours", 0)
        assert 24 * 30 <= early <= validity // 4, cert.name
