"""The lab's certificates are what pulumi-tls would issue from the program's declarations, and nothing more."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab

LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"


def declarations(pki, type_: str) -> list[dict]:
    return [d for d in pki.declarations if d["type"] == type_]


def declaration_producing(pki, placeholder: str) -> dict:
    return next(d for d in pki.declarations if placeholder in d["outputs"].values())


def test_every_certificate_carries_exactly_the_names_its_request_declares(pki):
    for cert in declarations(pki, LOCALLY_SIGNED):
        request = declaration_producing(pki, cert["inputs"]["certRequestPem"])
        issued = pki.describe(cert["name"])
        assert issued["dns_names"] == request["inputs"].get("dnsNames", []), cert["name"]
        assert issued["ip_addresses"] == request["inputs"].get("ipAddresses", []), cert["name"]
        subject = request["inputs"]["subject"]
        assert issued["subject"] == f"CN={subject['commonName']},O={subject['organization']}", cert["name"]


def test_no_certificate_allows_a_use_the_program_did_not_declare(pki):
    for cert in [*declarations(pki, SELF_SIGNED), *declarations(pki, LOCALLY_SIGNED)]:
        issued = pki.describe(cert["name"])
        # Each declared use is one key usage bit or one extended key usage; there are no others.
        assert len(issued["key_usage"]) + len(issued["extended_key_usage"]) == len(cert["inputs"]["allowedUses"]), cert["name"]
        assert issued["is_ca"] == bool(cert["inputs"].get("isCaCertificate")), cert["name"]
        assert issued["validity_hours"] == cert["inputs"]["validityPeriodHours"], cert["name"]


def test_every_leaf_is_signed_by_the_ca_it_declares(pki):
    for cert in declarations(pki, LOCALLY_SIGNED):
        ca = declaration_producing(pki, cert["inputs"]["caCertPem"])
        issued, authority = pki.describe(cert["name"]), pki.describe(ca["name"])
        assert issued["issuer"] == authority["subject"]
        assert issued["authority_key_id"] == authority["subject_key_id"] is not None
