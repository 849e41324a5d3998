"""`make preflight` on the lab: PASS for the swtpm stack as configured, FAIL with the reason for a wrong policy."""

from __future__ import annotations

import json

import pytest

from tools import preflight

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("fresh")]

ONES = "1" * 64


def test_preflight_passes_for_the_swtpm_stack_and_shows_each_step(lab, capsys):
    summary = preflight.preflight(lab.with_overrides({}))
    printed = capsys.readouterr().out
    assert summary["attestation_status"] == "PASS" and summary["attestation_count"] >= 2
    for step in ("certificates", "servers", "agent", "enrollment", "attestation", "verify"):
        assert f"  {step}" in printed


def test_preflight_fails_naming_the_pcr_the_quote_carried_for_a_policy_it_does_not_match(lab, registered_agent):
    wrong = lab.with_overrides({"tpmPolicy": json.dumps({"8": ONES})})
    with pytest.raises(preflight.Failed) as failed:
        preflight.preflight(wrong)
    reason = str(failed.value)
    assert f"agent {registered_agent.uuid}: attestation FAIL, policy_violation: PCR #8: {registered_agent.pcr(8)}" in reason
    assert ONES in reason


def test_a_lab_view_that_would_change_the_servers_is_refused(lab):
    with pytest.raises(ValueError, match="changes what the servers or the agent run"):
        lab.with_overrides({"verifierNodePort": "31999"})
