"""`make renew`: which certificates a stack export says are due, so a `pulumi up --replace` renews them."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

from helpers import ROOT

from tools.renewal import due

NOW = datetime.datetime(2027, 11, 1, tzinfo=datetime.UTC)
LEAF = "tls:index/locallySignedCert:LocallySignedCert"


def certificate(urn: str, ends: str, early_hours: int = 720, ready: bool = False, type_: str = LEAF) -> dict:
    outputs = {"validityEndTime": ends, "earlyRenewalHours": early_hours, "readyForRenewal": ready, "certPem": "..."}
    return {"urn": urn, "type": type_, "outputs": outputs}


def export(*resources: dict) -> dict:
    return {"version": 3, "deployment": {"resources": [{"urn": "stack", "type": "pulumi:pulumi:Stack"}, *resources]}}


def test_only_certificates_inside_their_early_renewal_window_are_due():
    state = export(
        certificate("verifier", "2027-11-20T00:00:00Z"),  # 19 days left, window 30: due
        certificate("registrar", "2027-12-15T00:00:00.123456789Z"),  # 44 days left: not yet
        certificate("ca", "2028-01-01T00:00:00Z", early_hours=2160, type_="tls:index/selfSignedCert:SelfSignedCert"),
        {"urn": "key", "type": "tls:index/privateKey:PrivateKey", "outputs": {}},
    )
    assert due(state, NOW) == ["verifier", "ca"]


def test_a_certificate_pulumi_tls_already_marked_is_due():
    assert due(export(certificate("tenant", "2030-01-01T00:00:00Z", ready=True)), NOW) == ["tenant"]


def test_the_command_line_prints_one_replace_per_due_certificate():
    state = export(certificate("urn:a", "2000-01-01T00:00:00Z"), certificate("urn:b", "2000-01-02T00:00:00Z"))
    result = subprocess.run([sys.executable, "-m", "tools.renewal"], input=json.dumps(state), cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["--replace=urn:a", "--replace=urn:b"]
