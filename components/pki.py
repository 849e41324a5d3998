"""KeylimePki: the CA and every TLS certificate of the deployment, issued with pulumi-tls.

Server certificates carry exactly the SANs `endpoints.server_sans` lists. Private keys are Pulumi
secrets; the CA key is never exposed outside this component.
"""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_tls as tls

from components.endpoints import SERVERS, Server, SubjectAltNames

KEY_ALGORITHM = "ECDSA"
# pulumi-tls would default to P224, which TLS libraries (rustls among them) no longer accept.
ECDSA_CURVE = "P256"
CA_VALIDITY_HOURS = 5 * 365 * 24
LEAF_VALIDITY_HOURS = 365 * 24
# Renewed well before expiry: `make renew` replaces a certificate inside this window (pulumi-tls does not
# always do it by itself, pulumi/pulumi-tls#39); the Secrets change and the pods that read them roll.
CA_EARLY_RENEWAL_HOURS = 90 * 24
LEAF_EARLY_RENEWAL_HOURS = 30 * 24
ORGANIZATION = "keylime-push"

CA_USES = ["cert_signing", "crl_signing", "digital_signature"]
SERVER_USES = ["digital_signature", "server_auth"]
CLIENT_USES = ["digital_signature", "client_auth"]

# Admin clients authenticate to the servers with mTLS: the tenant, the verifier when it asks the
# registrar for an agent's keys, and the attestation controller (it enrolls and removes agents).
# Agents need no client certificate (they use PoP tokens).
CLIENTS = ("tenant", "verifier-client", "attestation-controller")


@dataclasses.dataclass
class KeylimePkiArgs:
    server_sans: dict[Server, SubjectAltNames]
    tpm_manufacturer_ca: bool = False
    """swtpm: issue the "TPM manufacturer" CA that signs the software TPMs' EK certificates."""


@dataclasses.dataclass
class IssuedCertificate:
    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]


class KeylimePki(pulumi.ComponentResource):
    ca_cert_pem: pulumi.Output[str]
    servers: dict[Server, IssuedCertificate]
    clients: dict[str, IssuedCertificate]
    tpm_manufacturer_ca: IssuedCertificate | None

    def __init__(self, name: str, args: KeylimePkiArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:pki:KeylimePki", name, None, opts)
        self._name = name
        self._child = pulumi.ResourceOptions(parent=self)

        ca_key = self._key("ca")
        ca = self._self_signed_ca(f"{name}-ca", ca_key, "keylime-push CA")
        self.ca_cert_pem = ca.cert_pem
        self.servers = {
            server: self._issue(f"keylime-{server}", SERVER_USES, args.server_sans[server], ca, ca_key)
            for server in SERVERS
        }
        no_sans = SubjectAltNames(dns_names=(), ip_addresses=())
        self.clients = {client: self._issue(f"keylime-{client}", CLIENT_USES, no_sans, ca, ca_key) for client in CLIENTS}
        self.tpm_manufacturer_ca = self._tpm_manufacturer_ca() if args.tpm_manufacturer_ca else None
        self.register_outputs({"ca_cert_pem": self.ca_cert_pem})

    def _tpm_manufacturer_ca(self) -> IssuedCertificate:
        """A CA of its own, apart from the servers' CA: trusting it for EKs must not trust any TLS peer, and
        its key goes to every agent cluster (swtpm_localca signs with it there)."""
        key = self._key("tpm-manufacturer")
        cert = self._self_signed_ca(f"{self._name}-tpm-manufacturer-ca", key, "keylime-push TPM manufacturer")
        return IssuedCertificate(cert_pem=cert.cert_pem, private_key_pem=pulumi.Output.secret(key.private_key_pem))

    def _self_signed_ca(self, resource_name: str, key: tls.PrivateKey, common_name: str) -> tls.SelfSignedCert:
        return tls.SelfSignedCert(
            resource_name,
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=common_name, organization=ORGANIZATION),
            is_ca_certificate=True,
            validity_period_hours=CA_VALIDITY_HOURS,
            early_renewal_hours=CA_EARLY_RENEWAL_HOURS,
            allowed_uses=CA_USES,
            # swtpm_localca cannot sign with an issuer certificate that has no subject key id.
            set_subject_key_id=True,
            opts=self._child,
        )

    def _key(self, role: str) -> tls.PrivateKey:
        return tls.PrivateKey(
            f"{self._name}-{role}-key", algorithm=KEY_ALGORITHM, ecdsa_curve=ECDSA_CURVE, opts=self._child
        )

    def _issue(
        self,
        common_name: str,
        uses: list[str],
        sans: SubjectAltNames,
        ca: tls.SelfSignedCert,
        ca_key: tls.PrivateKey,
    ) -> IssuedCertificate:
        role = common_name.removeprefix("keylime-")
        key = self._key(role)
        request = tls.CertRequest(
            f"{self._name}-{role}-csr",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=common_name, organization=ORGANIZATION),
            dns_names=list(sans.dns_names),
            ip_addresses=list(sans.ip_addresses),
            opts=self._child,
        )
        cert = tls.LocallySignedCert(
            f"{self._name}-{role}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_cert_pem=ca.cert_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            validity_period_hours=LEAF_VALIDITY_HOURS,
            early_renewal_hours=LEAF_EARLY_RENEWAL_HOURS,
            allowed_uses=uses,
            opts=self._child,
        )
        return IssuedCertificate(cert_pem=cert.cert_pem, private_key_pem=pulumi.Output.secret(key.private_key_pem))
