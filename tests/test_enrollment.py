"""Enrollment and verification as declared: what re-runs them, what they wait for, what they expose."""

from __future__ import annotations

import json

from helpers import settings_for

from tools.offline import is_secret


def test_enrollment_carries_the_configured_policy_and_agent_count(run):
    policy = {"8": "AB" * 32, "0": ["0" * 64]}
    program = run("swtpm", agentClusters=3, tpmPolicy=json.dumps(policy))
    enroll = program.named("enrollment-enroll").plain
    assert enroll["environment"]["TPM_POLICY"] == settings_for("swtpm", tpmPolicy=json.dumps(policy)).tpm_policy_json
    assert json.loads(enroll["environment"]["TPM_POLICY"]) == {"0": "0" * 64, "8": "ab" * 32}
    assert enroll["environment"]["EXPECTED_AGENTS"] == "3"
    assert (enroll["create"], enroll["update"], enroll["delete"]) == (
        "components/scripts/enroll.py add",
        "components/scripts/enroll.py update",
        "components/scripts/enroll.py delete",
    )


def test_a_changed_policy_updates_in_place_while_new_clusters_replace_delete_first(run):
    base, changed = run("swtpm"), run("swtpm", tpmPolicy=json.dumps({"8": "1" * 64}))
    enroll, enroll_changed = base.named("enrollment-enroll"), changed.named("enrollment-enroll")
    assert enroll.plain["triggers"] == enroll_changed.plain["triggers"]  # no replace for a policy change...
    assert enroll.plain["environment"]["TPM_POLICY"] != enroll_changed.plain["environment"]["TPM_POLICY"]  # ...an update
    assert enroll.plain["triggers"] == ["infra-cluster-id", "agents-1-cluster-id", "agents-2-cluster-id"]
    assert enroll.delete_before_replace is True


def test_the_infra_kubeconfig_reaches_the_scripts_only_as_a_secret(swtpm):
    for name in ("enrollment-enroll", "enrollment-verify"):
        resource = swtpm.named(name)
        # One secret value makes the whole environment map secret on the wire.
        assert is_secret(resource.inputs["environment"])
        assert resource.plain["logging"] == "stderr"


def test_verify_runs_after_enrollment_and_again_only_when_enrollment_changes(swtpm):
    verify = swtpm.named("enrollment-verify")
    assert swtpm.named("enrollment-enroll").urn in verify.dependencies
    assert verify.plain["create"] == verify.plain["update"] == "components/scripts/enroll.py verify"
    assert "ENROLLED" in verify.plain["environment"]
    assert "triggers" not in verify.plain


def test_stack_outputs_name_clusters_endpoints_and_hide_the_kubeconfig(run):
    program = run("swtpm", agentClusters=3, command_stdout=lambda name, inputs: {
        "enrollment-enroll": '{"enrolled": ["abc"]}', "enrollment-verify": '{"agents": []}'}.get(name, ""))
    outputs = program.outputs
    assert outputs["agentHosts"].value == ["keylime-swtpm-agents-1", "keylime-swtpm-agents-2", "keylime-swtpm-agents-3"]
    assert outputs["infraCluster"].value == "keylime-swtpm-infra"
    assert outputs["verifierEndpoint"].value == "https://keylime-swtpm-infra-control-plane:30881"
    assert outputs["enrolledAgents"].value == '{"enrolled": ["abc"]}' and not outputs["enrolledAgents"].secret
    assert outputs["attestation"].value == '{"agents": []}' and not outputs["attestation"].secret
    assert outputs["infraKubeconfig"].secret
