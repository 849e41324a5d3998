"""The program's enrollment Commands (enroll.py through kube.sh), run for real against the lab's tenant and servers.

`kubectl` is the lab's stand-in (tests/lab/bin/kubectl): `kubectl exec ... keylime_tenant` runs the real
tenant in the lab's tenant "container". Each test runs a declared Command line with its declared
environment, except EXPECTED_AGENTS (the lab has one agent, not one per agent cluster) and the waits.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from conftest import ROOT

from tools.offline import run_program

pytestmark = pytest.mark.lab

CHANGED_DIGEST = "ab" * 32


def command(run, name: str) -> dict:
    """A declared enrollment Command's inputs (create, update, delete, environment)."""
    return run.named(name).plain


def run_enroll(kubectl_env, line: str, environment: dict[str, str], **overrides: str) -> subprocess.CompletedProcess:
    env = {**kubectl_env, **environment, "EXPECTED_AGENTS": "1", "POLL_SECONDS": "0.5", **overrides}
    return subprocess.run(shlex.split(line), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def verifier_view(infra, uuid: str) -> dict | None:
    """The verifier's record of the agent (`keylime_tenant -c status --push-model`), or None if it has none."""
    result = infra.tenant("-c", "status", "-u", uuid, "--push-model")
    marker = "Agent Info from Verifier"
    if marker not in result.stdout:
        return None
    return json.loads(result.stdout.split(marker, 1)[1].split("\n", 2)[1])[uuid]


def verifier_policy(infra, uuid: str) -> dict:
    record = verifier_view(infra, uuid)
    assert record is not None, f"the verifier does not have {uuid}"
    policy = json.loads(record["tpm_policy"])
    policy.pop("mask")  # the PCR mask the tenant derives from the policy
    return policy


def as_verifier_stores(tpm_policy: str) -> dict:
    """A TPM_POLICY as the verifier keeps it: each PCR with a list of digests."""
    return {pcr: digests if isinstance(digests, list) else [digests] for pcr, digests in json.loads(tpm_policy).items()}


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
