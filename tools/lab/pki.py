#!/usr/bin/env python3
"""Real keys and X.509 certificates from exactly the inputs the program declares to pulumi-tls.

This is the one mapping from declared inputs to certificates in the lab: it builds each one field for
field the way hashicorp/terraform-provider-tls does (internal/provider/common_cert.go and the
resource files), so the servers run on what `pulumi up` would issue and on nothing the lab made up.
An input it does not know is an error, never silently dropped.

It runs under the lab's Python, which has `cryptography`:

    pki.py issue DECLARED.json OUT.json   DECLARED: [{"type", "name", "inputs", "outputs": {attr: placeholder}}]
                                          OUT: {placeholder: real PEM} for every output of every resource
    pki.py describe CERT.pem              the certificate's fields, in X.509 terms, as JSON
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"

# allowed_uses -> x509.KeyUsage arguments (the provider's keyUsages) ...
KEY_USAGES = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}
# ... or extended key usages (the provider's extendedKeyUsages that have an OID in `cryptography`).
EXTENDED_KEY_USAGES = {
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
# ecdsa_curve -> curve, and the hash Go's x509 signs with for a key on that curve.
# The hashes are the ones certificate builders sign with, hence the narrow type.
SignatureHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
CURVES: dict[str, tuple[type[ec.EllipticCurve], SignatureHash]] = {
    "P224": (ec.SECP224R1, hashes.SHA256()),
    "P256": (ec.SECP256R1, hashes.SHA256()),
    "P384": (ec.SECP384R1, hashes.SHA384()),
    "P521": (ec.SECP521R1, hashes.SHA512()),
}
# subject attributes, in the order Go's pkix.Name writes them.
SUBJECT_FIELDS = (
    ("country", NameOID.COUNTRY_NAME),
    ("province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("streetAddresses", NameOID.STREET_ADDRESS),
    ("postalCode", NameOID.POSTAL_CODE),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("commonName", NameOID.COMMON_NAME),
    ("serialNumber", NameOID.SERIAL_NUMBER),
)
# Inputs each resource type may declare: the lab refuses to guess the meaning of any other.
# (early_renewal_hours only schedules a replacement; it changes nothing in the certificate.)
UNDERSTOOD = {
    PRIVATE_KEY: {"algorithm", "ecdsaCurve", "rsaBits"},
    SELF_SIGNED_CERT: {"privateKeyPem", "subject", "dnsNames", "ipAddresses", "isCaCertificate", "allowedUses",
                       "validityPeriodHours", "setSubjectKeyId", "earlyRenewalHours"},
    CERT_REQUEST: {"privateKeyPem", "subject", "dnsNames", "ipAddresses"},
    LOCALLY_SIGNED_CERT: {"certRequestPem", "caCertPem", "caPrivateKeyPem", "isCaCertificate", "allowedUses",
                          "validityPeriodHours", "setSubjectKeyId", "earlyRenewalHours"},
}
OUTPUT_OF = {
    PRIVATE_KEY: "privateKeyPem",
    SELF_SIGNED_CERT: "certPem",
    CERT_REQUEST: "certRequestPem",
    LOCALLY_SIGNED_CERT: "certPem",
}


class DeclarationError(ValueError):
    """The declarations ask for something this mapping cannot reproduce faithfully."""


def private_key(inputs: dict[str, Any]):
    algorithm = inputs.get("algorithm")
    if algorithm == "ECDSA":
        curve = inputs.get("ecdsaCurve", "P224")  # the provider's default
        if curve not in CURVES:
            raise DeclarationError(f"unknown ecdsaCurve {curve!r}")
        return ec.generate_private_key(CURVES[curve][0]())
    if algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))
    if algorithm == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise DeclarationError(f"unsupported key algorithm {algorithm!r}")


def key_pem(key) -> str:
    # The provider's private_key_pem is PKCS#1 for RSA, SEC 1 ("EC PRIVATE KEY") for ECDSA, PKCS#8 for ED25519.
    form = serialization.PrivateFormat.TraditionalOpenSSL
    if isinstance(key, ed25519.Ed25519PrivateKey):
        form = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode()


def signature_hash(key) -> SignatureHash | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return next(hash_ for curve, hash_ in CURVES.values() if isinstance(key.curve, curve))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # Ed25519 signs the message itself
    return hashes.SHA256()


def subject_name(subject: dict[str, Any] | None) -> x509.Name:
    subject = dict(subject or {})
    attributes = []
    for field, oid in SUBJECT_FIELDS:
        value = subject.pop(field, None)
        for item in value if isinstance(value, list) else [value] if value is not None else []:
            attributes.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, item)]))
    if subject:
        raise DeclarationError(f"unknown subject fields {sorted(subject)}")
    return x509.Name(attributes)


def alt_names(inputs: dict[str, Any]) -> list[x509.GeneralName]:
    return [x509.DNSName(name) for name in inputs.get("dnsNames") or []] + [
        x509.IPAddress(ipaddress.ip_address(address)) for address in inputs.get("ipAddresses") or []
    ]


def certificate(
    inputs: dict[str, Any],
    subject: x509.Name,
    sans: list[x509.GeneralName],
    public_key,
    signing_key,
    issuer: x509.Certificate | None,
) -> x509.Certificate:
    """Go's x509.CreateCertificate on the template the provider fills (common_cert.go createCertificate)."""
    uses = inputs.get("allowedUses") or []
    unknown = [use for use in uses if use not in KEY_USAGES and use not in EXTENDED_KEY_USAGES]
    if unknown:
        raise DeclarationError(f"allowed uses the lab cannot map: {unknown}")
    is_ca = bool(inputs.get("isCaCertificate"))
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=int(inputs["validityPeriodHours"])))
    )
    key_usage_bits = {KEY_USAGES[use] for use in uses if use in KEY_USAGES}
    if key_usage_bits:
        builder = builder.add_extension(
            x509.KeyUsage(**{argument: argument in key_usage_bits for argument in KEY_USAGES.values()}), critical=True
        )
    extended = list(dict.fromkeys(EXTENDED_KEY_USAGES[use] for use in uses if use in EXTENDED_KEY_USAGES))
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    # BasicConstraintsValid is always true in the provider's templates; no max_path_length is declared.
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    if is_ca or inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer is not None and issuer.subject != subject:
        try:
            issuer_key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            issuer_key_id = None
        if issuer_key_id:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier(issuer_key_id, authority_cert_issuer=None, authority_cert_serial_number=None),
                critical=False,
            )
    if sans:
        # Go marks the SAN extension critical only when the subject is empty (RFC 5280 4.2.1.6).
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
    return builder.sign(signing_key, signature_hash(signing_key))


def issue(declared: list[dict[str, Any]]) -> dict[str, str]:
    """Realise every declared resource, resolving references between them by their placeholder values."""
    real: dict[str, Any] = {}  # placeholder -> key, CSR or certificate object
    pems: dict[str, str] = {}  # placeholder -> PEM
    pending = list(declared)
    for resource in pending:
        extra = set(resource["inputs"]) - UNDERSTOOD.get(resource["type"], set())
        if resource["type"] not in UNDERSTOOD or extra:
            raise DeclarationError(f"{resource['type']} {resource['name']}: cannot reproduce inputs {sorted(extra)}")

    def ref(inputs: dict[str, Any], attribute: str):
        return real.get(inputs[attribute])

    while pending:
        progressed = False
        for resource in list(pending):
            kind, inputs = resource["type"], resource["inputs"]
            references = [a for a in ("privateKeyPem", "certRequestPem", "caCertPem", "caPrivateKeyPem") if a in inputs]
            if any(ref(inputs, attribute) is None for attribute in references):
                continue
            if kind == PRIVATE_KEY:
                made = private_key(inputs)
                pem = key_pem(made)
            elif kind == CERT_REQUEST:
                key = ref(inputs, "privateKeyPem")
                builder = x509.CertificateSigningRequestBuilder().subject_name(subject_name(inputs.get("subject")))
                sans = alt_names(inputs)
                if sans:
                    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
                made = builder.sign(key, signature_hash(key))
                pem = made.public_bytes(serialization.Encoding.PEM).decode()
            elif kind == SELF_SIGNED_CERT:
                key = ref(inputs, "privateKeyPem")
                made = certificate(inputs, subject_name(inputs.get("subject")), alt_names(inputs), key.public_key(), key, None)
                pem = made.public_bytes(serialization.Encoding.PEM).decode()
            else:  # LOCALLY_SIGNED_CERT: subject and SANs come from the CSR, as in the provider
                request, ca = ref(inputs, "certRequestPem"), ref(inputs, "caCertPem")
                try:
                    sans = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
                except x509.ExtensionNotFound:
                    sans = []
                made = certificate(inputs, request.subject, sans, request.public_key(), ref(inputs, "caPrivateKeyPem"), ca)
                pem = made.public_bytes(serialization.Encoding.PEM).decode()
            placeholder = resource["outputs"][OUTPUT_OF[kind]]
            real[placeholder], pems[placeholder] = made, pem
            if kind == PRIVATE_KEY and "publicKeyPem" in resource["outputs"]:
                pems[resource["outputs"]["publicKeyPem"]] = made.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode()
            pending.remove(resource)
            progressed = True
        if not progressed:
            names = ", ".join(r["name"] for r in pending)
            raise DeclarationError(f"references that no declared resource produces: {names}")
    return pems


def describe(pem: bytes) -> dict[str, Any]:
    """What a TLS peer sees in a certificate, in X.509's own terms."""
    cert = x509.load_pem_x509_certificate(pem)

    def extension(kind):
        try:
            return cert.extensions.get_extension_for_class(kind)
        except x509.ExtensionNotFound:
            return None

    key_usage = extension(x509.KeyUsage)
    bits = []
    if key_usage:
        for argument in KEY_USAGES.values():
            try:
                if getattr(key_usage.value, argument):
                    bits.append(argument)
            except ValueError:  # encipher_only/decipher_only without key_agreement
                pass
    extended = extension(x509.ExtendedKeyUsage)
    sans = extension(x509.SubjectAlternativeName)
    basic = extension(x509.BasicConstraints)
    ski, aki = extension(x509.SubjectKeyIdentifier), extension(x509.AuthorityKeyIdentifier)
    public_key = cert.public_key()
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "key_usage": bits,
        "extended_key_usage": [oid.dotted_string for oid in extended.value] if extended else [],
        "dns_names": sans.value.get_values_for_type(x509.DNSName) if sans else [],
        "ip_addresses": [str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)] if sans else [],
        "is_ca": bool(basic and basic.value.ca),
        "validity_hours": (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 3600,
        "subject_key_id": ski.value.digest.hex() if ski else None,
        "authority_key_id": aki.value.key_identifier.hex() if aki and aki.value.key_identifier else None,
        "curve": public_key.curve.name if isinstance(public_key, ec.EllipticCurvePublicKey) else None,
    }


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "issue":
        with open(argv[2]) as source:
            declared = json.load(source)
        try:
            pems = issue(declared)
        except DeclarationError as error:
            print(f"pki.py: {error}", file=sys.stderr)
            return 1
        with open(argv[3], "w") as out:
            json.dump(pems, out)
        return 0
    if len(argv) == 3 and argv[1] == "describe":
        with open(argv[2], "rb") as source:
            print(json.dumps(describe(source.read())))
        return 0
    print(f"usage: {argv[0]} issue DECLARED.json OUT.json | describe CERT.pem", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
