"""The program's enrollment Commands (enroll.py through kube.sh), run for real against the lab's tenant and servers.

`kubectl` is the lab's stand-in (tools/lab/bin/kubectl): `kubectl exec ... keylime_tenant` runs the real
tenant in the lab's tenant "container". Each test runs a declared Command line with its declared
environment, except EXPECTED_AGENTS (the lab has one agent, not one per agent cluster) and the waits.
"""

from __future__ import annotations

import json

import pytest

from tools.offline import run_program

from .steps import as_verifier_stores, command, run_enroll, verifier_policy, verifier_view

pytestmark = pytest.mark.lab

CHANGED_DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def enroll_command(program) -> dict:
    return command(program, "enrollment-enroll")


@pytest.fixture(autouse=True)
def not_enrolled(infra, registered_agent):
    """Each test starts with the registered agent known to the registrar only."""
    if verifier_view(infra, registered_agent.uuid) is not None:
        result = infra.tenant("-c", "delete", "-u", registered_agent.uuid, "--push-model")
        assert result.returncode == 0, result.stdout + result.stderr
    yield


def test_add_enrolls_the_registered_agent_with_the_configured_policy(infra, kubectl_env, registered_agent, enroll_command):
    result = run_enroll(kubectl_env, enroll_command["create"], enroll_command["environment"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"enrolled": [registered_agent.uuid]}
    configured = enroll_command["environment"]["TPM_POLICY"]
    assert verifier_policy(infra, registered_agent.uuid) == as_verifier_stores(configured)


def test_a_second_add_enrolls_nothing(infra, kubectl_env, registered_agent, enroll_command):
    run_enroll(kubectl_env, enroll_command["create"], enroll_command["environment"])
    again = run_enroll(kubectl_env, enroll_command["create"], enroll_command["environment"])
    assert again.returncode == 0, again.stderr
    assert f"{registered_agent.uuid} is already enrolled" in again.stderr
    assert "enrolling" not in again.stderr


def test_update_re_enrolls_with_a_changed_policy(infra, kubectl_env, registered_agent, enroll_command):
    run_enroll(kubectl_env, enroll_command["create"], enroll_command["environment"])
    changed = command(run_program("swtpm", {"tpmPolicy": json.dumps({"8": CHANGED_DIGEST})}), "enrollment-enroll")
    assert changed["environment"]["TPM_POLICY"] != enroll_command["environment"]["TPM_POLICY"]
    result = run_enroll(kubectl_env, changed["update"], changed["environment"])
    assert result.returncode == 0, result.stderr
    assert f"re-enrolling {registered_agent.uuid}" in result.stderr
    assert verifier_policy(infra, registered_agent.uuid) == {"8": [CHANGED_DIGEST]}


def test_delete_removes_the_agent_from_the_verifier_only(infra, kubectl_env, registered_agent, enroll_command):
    run_enroll(kubectl_env, enroll_command["create"], enroll_command["environment"])
    result = run_enroll(kubectl_env, enroll_command["delete"], enroll_command["environment"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"removed": [registered_agent.uuid]}
    assert verifier_view(infra, registered_agent.uuid) is None
    assert registered_agent.uuid in infra.tenant("-c", "reglist").stdout


def test_verify_reports_the_enrolled_agent_that_has_not_attested(infra, kubectl_env, program, registered_agent, enroll_command):
    run_enroll(kubectl_env, enroll_command["create"], enroll_command["environment"])
    verify = command(program, "enrollment-verify")
    result = run_enroll(kubectl_env, verify["create"], verify["environment"], WAIT_SECONDS="1")
    assert result.returncode == 1, result.stderr
    assert f"agent {registered_agent.uuid}: enrolled, not attested yet (PENDING)" in result.stderr
