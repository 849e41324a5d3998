"""requireEkCert, enforced: an agent is enrolled only if its EK certificate chains to the trust store.

keylime 7.14.3 checks nothing here for push agents (the tenant skips its EK check with --push-model, the
registrar's trust check is commented out), so the controller does it before enrolling.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature


@dataclasses.dataclass(frozen=True)
class TrustStore:
    certificates: tuple[x509.Certificate, ...]

    @classmethod
    def load(cls, directory: Path) -> TrustStore:
        """Every PEM (or DER) certificate in the files of `directory` (a mounted Secret: one key per file)."""
        found: list[x509.Certificate] = []
        for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
            data = path.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" in data:
                found.extend(x509.load_pem_x509_certificates(data))
            else:
                found.append(x509.load_der_x509_certificate(data))
        return cls(tuple(found))

    def untrusted_reason(self, ek_cert: str | bytes | None) -> str | None:
        """None if the EK certificate (DER, or its base64 as the registrar returns it) chains to the store."""
        if not ek_cert:
            return "it registered no EK certificate"
        der = base64.b64decode(ek_cert) if isinstance(ek_cert, str) else ek_cert
        try:
            current = x509.load_der_x509_certificate(der)
        except ValueError as error:
            return f"its EK certificate does not parse ({error})"
        # Every certificate in the store is a trust anchor (vendor roots and their EK-issuing intermediates alike):
        # the agent sends only its EK certificate, so its issuer must be in the store itself.
        if any(ca.subject == current.issuer and _signed_by(current, ca) for ca in self.certificates):
            return None
        return f"its EK certificate (issuer {current.issuer.rfc4514_string()}) is not signed by a CA in the EK trust store"

def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
