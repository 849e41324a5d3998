"""Agents attesting for real: the push protocol against the real verifier, on the pod's software TPM.

The emulated agent (tools/lab/push.py) does what keylime_push_model_agent does: PoP session, capability
negotiation, a quote of the PCRs the verifier selects over its challenge, evidence, at the verifier's pace.
Enrollment and verification are the program's declared Commands, run through kube.sh and the lab's kubectl.
"""

from __future__ import annotations

import json
import ssl

import pytest

from tools.lab.push import ProtocolError
from tools.offline import run_program

from .steps import command, run_enroll

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("fresh")]

ONES = "1" * 64


def declared(policy: dict | None = None) -> tuple[dict, dict]:
    """The enrollment and verify Commands the program declares, for the default or a given tpmPolicy."""
    program = run_program("swtpm", {"tpmPolicy": json.dumps(policy)} if policy else {})
    return command(program, "enrollment-enroll"), command(program, "enrollment-verify")


def enroll(kubectl_env, policy: dict | None = None) -> dict:
    enrollment, verify = declared(policy)
    result = run_enroll(kubectl_env, enrollment["create"], enrollment["environment"])
    assert result.returncode == 0, result.stderr
    return verify


def verify(kubectl_env, verify_command: dict, wait: str = "20"):
    return run_enroll(kubectl_env, verify_command["create"], verify_command["environment"], WAIT_SECONDS=wait)


def test_an_enrolled_agent_attests_and_verify_reports_pass(lab, kubectl_env, registered_agent):
    verify_command = enroll(kubectl_env)
    client = lab.push_client(registered_agent)
    outcomes = client.attest_times(2)
    assert [o.selected_pcrs for o in outcomes] == [[8], [8]]  # exactly the PCRs the policy names
    with client.attesting():
        result = verify(kubectl_env, verify_command)
    assert result.returncode == 0, result.stderr
    (summary,) = json.loads(result.stdout)["agents"]
    assert summary["uuid"] == registered_agent.uuid
    assert summary["attestation_status"] == "PASS" and summary["attestation_count"] >= 2


def test_an_attestation_asked_for_early_gets_429_and_the_agent_waits_as_told(lab, kubectl_env, registered_agent):
    enroll(kubectl_env)
    client = lab.push_client(registered_agent)
    first = client.attest()
    early = client.attest()
    assert first.status == 202 and first.seconds_to_next > 0
    assert early.status == 429 and early.seconds_to_next > 0
    assert len(client.attest_times(1)) == 1


def test_a_policy_that_does_not_match_the_tpm_fails_naming_the_agent_the_pcr_and_the_quoted_value(
    lab, kubectl_env, registered_agent
):
    verify_command = enroll(kubectl_env, {"8": ONES})
    lab.push_client(registered_agent).attest()
    result = verify(kubectl_env, verify_command)
    assert result.returncode == 1
    quoted = registered_agent.pcr(8)
    assert f"agent {registered_agent.uuid}: attestation FAIL, policy_violation: PCR #8: {quoted} from quote" in result.stderr
    assert ONES in result.stderr


def test_a_pcr_extended_after_a_pass_fails_the_next_attestation(lab, kubectl_env, registered_agent):
    verify_command = enroll(kubectl_env)
    client = lab.push_client(registered_agent)
    client.attest_times(1)
    with client.attesting():
        assert verify(kubectl_env, verify_command).returncode == 0
    registered_agent.extend_pcr(8, "ee" * 32)
    client.attest_times(1)
    result = verify(kubectl_env, verify_command)
    assert result.returncode == 1
    assert f"PCR #8: {registered_agent.pcr(8)} from quote" in result.stderr


def test_correcting_the_policy_re_enrolls_through_the_update_path_and_the_agent_passes_again(
    lab, kubectl_env, registered_agent
):
    wrong_verify = enroll(kubectl_env, {"8": ONES})
    lab.push_client(registered_agent).attest()
    assert verify(kubectl_env, wrong_verify).returncode == 1
    corrected, corrected_verify = declared({"8": registered_agent.pcr(8)})
    result = run_enroll(kubectl_env, corrected["update"], corrected["environment"])
    assert result.returncode == 0 and f"re-enrolling {registered_agent.uuid}" in result.stderr
    client = lab.push_client(registered_agent)
    client.attest_times(1)
    with client.attesting():
        passed = verify(kubectl_env, corrected_verify)
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["agents"][0]["attestation_status"] == "PASS"


def test_a_proof_of_possession_over_the_wrong_challenge_is_refused(lab, kubectl_env, registered_agent):
    enroll(kubectl_env)
    with pytest.raises(ProtocolError) as refused:
        lab.push_client(registered_agent).authenticate(tamper_challenge=True)
    assert refused.value.status == 401


def test_an_agent_never_enrolled_gets_no_token_and_verify_finds_no_agent(lab, kubectl_env, registered_agent):
    with pytest.raises(ProtocolError) as refused:
        lab.push_client(registered_agent).authenticate()
    assert refused.value.body["data"]["attributes"]["evaluation"] == "fail"
    result = verify(kubectl_env, declared()[1], wait="1")
    assert result.returncode == 1 and "only 0 of 1 agents are enrolled" in result.stderr


def test_the_agent_trusts_the_verifier_only_under_the_name_its_config_gives(lab, kubectl_env, registered_agent):
    enroll(kubectl_env)
    client = lab.push_client(registered_agent)
    client.host = "verifier.elsewhere.example"
    with pytest.raises(ssl.SSLCertVerificationError):
        client.authenticate()
