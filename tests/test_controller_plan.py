"""The controller's decisions (controller/fleet.py), one rule at a time, on snapshots built by hand."""

from __future__ import annotations

import json

import pytest

from controller.enrollment import Policies, stored_form
from controller.fleet import AgentPod, Registration, Snapshot, plan

ZEROS, ONES = "0" * 64, "1" * 64
POLICY = json.dumps({"8": ZEROS})
POLICIES = Policies.parse(POLICY)
POD_A = AgentPod("agents-1", "node-a", "172.18.0.11")
POD_B = AgentPod("agents-2", "node-b", "172.18.0.12")


class NoTrust:
    """A trust store that refuses every EK, saying so."""

    def untrusted_reason(self, ek_cert):
        return f"untrusted {ek_cert}"


def enrolled(pod: AgentPod, status: str = "PASS", policy: str = POLICY, count: int = 3) -> dict:
    return {"attestation_status": status, "attestation_count": count, "last_successful_attestation": 1700000000,
            "tpm_policy": stored_form({pcr: [d] for pcr, d in json.loads(policy).items()}),
            "meta_data": json.dumps({"cluster": pod.cluster, "node": pod.node, "address": pod.address}),
            "maximum_attestation_interval": "10s"}


def snapshot(registered=(), registrations=(), verifier=None, clusters=None) -> Snapshot:
    return Snapshot(
        registered=frozenset(registered) if registered is not None else None,
        registrations={r.uuid: r for r in registrations},
        verifier=verifier if verifier is not None else {},
        clusters=clusters if clusters is not None else {"agents-1": (POD_A,), "agents-2": (POD_B,)},
    )


def test_a_new_registration_from_a_running_node_is_enrolled_there():
    result = plan(snapshot(["a"], [Registration("a", POD_A.address, None)]), POLICIES, None)
    assert [(e.uuid, e.pod, e.replace) for e in result.enroll] == [("a", POD_A, False)]
    assert result.remove == [] and result.refusals == []


def test_an_agent_on_another_policy_is_re_enrolled_and_one_on_the_policy_is_left_alone():
    verifier = {"a": enrolled(POD_A, policy=json.dumps({"8": ONES})), "b": enrolled(POD_B)}
    result = plan(snapshot(["a", "b"], verifier=verifier), POLICIES, None)
    assert [(e.uuid, e.replace) for e in result.enroll] == [("a", True)]



REFSTATE = {"scrtm_and_bios": [{"scrtm": "0x" + "aa" * 32}], "kernels": []}
BOOT = Policies.parse("{}", json.dumps(REFSTATE))


def with_boot(record: dict, policies: Policies | None, has_mb_refstate: bool = True) -> dict:
    """A verifier record enrolled with `policies`' measured-boot policy; `policies` None: through the tenant,
    which records no digest."""
    meta = json.loads(record["meta_data"]) if policies is not None else {}
    return {**record, "tpm_policy": stored_form({}, measured_boot=True), "has_mb_refstate": int(has_mb_refstate),
            "meta_data": json.dumps({**meta, **(policies.metadata() if policies else {})})}


def test_a_change_of_the_measured_boot_policy_re_enrolls_the_agents_enrolled_with_the_old_one():
    changed = Policies.parse("{}", json.dumps({**REFSTATE, "kernels": [{"kernel_cmdline": "new"}]}))
    verifier = {"a": with_boot(enrolled(POD_A), BOOT), "b": with_boot(enrolled(POD_B), changed)}
    result = plan(snapshot(["a", "b"], verifier=verifier), changed, None)
    assert [(e.uuid, e.replace) for e in result.enroll] == [("a", True)]
    assert [v.reason for v in result.nodes if v.uuid == "a"] == [
        f"re-enrolling: enrolled with another measured-boot policy (sha256 {str(BOOT.boot_digest)[:12]}...)"]


def test_the_measured_boot_policy_is_compared_by_content_not_by_its_formatting():
    reformatted = Policies.parse("{}", json.dumps(REFSTATE, indent=4, sort_keys=True))
    result = plan(snapshot(["a"], verifier={"a": with_boot(enrolled(POD_A), BOOT)}), reformatted, None)
    assert result.enroll == []


@pytest.mark.parametrize("record,policies,why", [
    (lambda: with_boot(enrolled(POD_A), None, has_mb_refstate=False), BOOT, "enrolled without the measured-boot policy"),
    (lambda: with_boot(enrolled(POD_A), BOOT), Policies.parse(json.dumps({"23": ZEROS})),
     "enrolled with another TPM policy"),
    (lambda: {**enrolled(POD_A, policy=json.dumps({"23": ZEROS})), "has_mb_refstate": 1},
     Policies.parse(json.dumps({"23": ZEROS})), "enrolled with a measured-boot policy, the stack has none"),
])
def test_adding_or_dropping_the_measured_boot_policy_re_enrolls(record, policies, why):
    result = plan(snapshot(["a"], [Registration("a", POD_A.address, None)], {"a": record()}), policies, None)
    assert [(e.uuid, e.replace) for e in result.enroll] == [("a", True)]
    assert [v.reason for v in result.nodes if v.uuid == "a"][0].startswith(f"re-enrolling: {why}")


def test_an_agent_the_tenant_enrolled_with_a_measured_boot_policy_is_judged_by_having_one():
    # keylime_tenant records no digest; enroll.py update re-enrolls every agent on a new MB_POLICY before the
    # controller reads it, so having one is all that can be asked of such an agent.
    tenant_enrolled = {"a": with_boot(enrolled(POD_A), None)}
    result = plan(snapshot(["a"], [Registration("a", POD_A.address, None)], tenant_enrolled), BOOT, None)
    assert result.enroll == [] and [v.state for v in result.nodes if v.uuid == "a"] == ["PASS"]


def test_with_a_measured_boot_policy_the_stored_mask_selects_its_pcrs_and_an_empty_tpm_policy_is_enrollable():
    assert BOOT.tpm == {}
    assert json.loads(BOOT.stored_tpm_policy()) == {"mask": hex(0b1111101111111111)}  # PCRs 0-9 and 11-15
    assert json.loads(BOOT.boot or "null") == REFSTATE and BOOT.metadata() == {"mb_policy_sha256": BOOT.boot_digest}
    assert Policies.parse(POLICY).metadata() == {} and Policies.parse(POLICY).boot is None


@pytest.mark.parametrize("mb_policy", ["[]", "not json", '"a string"'])
def test_a_measured_boot_policy_that_is_not_a_json_object_is_refused(mb_policy):
    with pytest.raises(ValueError, match="measured-boot policy is a JSON object"):
        Policies.parse("{}", mb_policy)

def test_registrations_claiming_no_running_node_are_removed_from_registrar_and_verifier():
    verifier = {"a": enrolled(POD_A), "gone": enrolled(AgentPod("agents-1", "node-z", "172.18.0.99"))}
    result = plan(snapshot(["a", "gone", "rogue"], [Registration("rogue", "10.0.0.1", None)], verifier), POLICIES, None)
    assert sorted((r.uuid, r.registrar, r.verifier) for r in result.remove) == [("gone", True, True), ("rogue", True, False)]


def test_an_enrollment_without_a_registration_is_removed_from_the_verifier():
    result = plan(snapshot(["a"], verifier={"a": enrolled(POD_A), "orphan": enrolled(POD_B)}), POLICIES, None)
    assert [(r.uuid, r.registrar, r.verifier) for r in result.remove] == [("orphan", False, True)]


def test_an_unreachable_cluster_is_not_an_agent_gone():
    verifier = {"b": enrolled(POD_B, status="TIMEOUT")}
    result = plan(snapshot(["b", "new"], [Registration("new", "172.18.0.77", None)], verifier,
                           {"agents-1": (POD_A,), "agents-2": None}), POLICIES, None)
    assert result.remove == [] and result.enroll == []
    assert [v.pod.node for v in result.nodes] == ["node-a"]  # node-b keeps whatever state it has
    assert any("agents-2" in note for note in result.held_back)


@pytest.mark.parametrize("down", ["registrar", "verifier"])
def test_nothing_is_decided_while_keylime_does_not_answer(down):
    base = snapshot(["a"], [Registration("a", POD_A.address, None)], {"x": enrolled(POD_B)})
    broken = Snapshot(None if down == "registrar" else base.registered, base.registrations,
                      None if down == "verifier" else base.verifier, base.clusters)
    result = plan(broken, POLICIES, None)
    assert (result.enroll, result.remove, result.nodes) == ([], [], [])
    assert down in result.held_back[0]


def test_a_second_claim_on_a_node_held_by_an_attesting_agent_is_removed_with_an_event():
    result = plan(snapshot(["a", "intruder"], [Registration("intruder", POD_A.address, None)],
                           {"a": enrolled(POD_A)}), POLICIES, None)
    assert [(r.uuid, r.registrar) for r in result.remove] == [("intruder", True)]
    assert [(r.uuid, r.event_reason) for r in result.refusals] == [("intruder", "ConflictingRegistration")]
    assert [(v.state, v.uuid) for v in result.nodes if v.pod == POD_A] == [("PASS", "a")]


def test_claims_on_a_node_nobody_holds_by_attesting_are_never_trusted_automatically():
    result = plan(snapshot(["old", "new"], [Registration("new", POD_A.address, None)],
                           {"old": enrolled(POD_A, status="TIMEOUT")}), POLICIES, None)
    assert result.enroll == [] and result.remove == []
    assert sorted((r.uuid, r.event_reason) for r in result.refusals) == [
        ("new", "AmbiguousRegistration"), ("old", "AmbiguousRegistration")]
    assert [v.state for v in result.nodes if v.pod == POD_A] == ["REFUSED"]


def test_an_untrusted_ek_is_not_enrolled_and_its_node_is_refused():
    # NoTrust duck-types TrustStore's untrusted_reason
    result = plan(snapshot(["a"], [Registration("a", POD_A.address, "EKDER")]), POLICIES, NoTrust())  # type: ignore[arg-type]
    assert result.enroll == []
    assert [(r.uuid, r.event_reason, r.message) for r in result.refusals] == [
        ("a", "UntrustedEK", "agent a is not enrolled: untrusted EKDER")]
    assert [(v.state, v.reason) for v in result.nodes if v.pod == POD_A] == [("REFUSED", "untrusted EKDER")]


def test_an_agent_enrolled_by_someone_else_is_checked_too_and_removed_if_untrusted():
    record = enrolled(POD_A)
    record["meta_data"] = "{}"  # enrolled by the tenant (deploy-time Command), no placement
    # NoTrust duck-types TrustStore's untrusted_reason
    result = plan(snapshot(["a"], [Registration("a", POD_A.address, "EKDER")], {"a": record}), POLICIES, NoTrust())  # type: ignore[arg-type]
    assert [(r.uuid, r.verifier, r.registrar) for r in result.remove] == [("a", True, False)]


@pytest.mark.parametrize("status,state", [("PASS", "PASS"), ("FAIL", "FAIL"), ("TIMEOUT", "TIMEOUT"), ("PENDING", "PENDING")])
def test_a_node_takes_its_agents_status(status, state):
    result = plan(snapshot(["a"], verifier={"a": enrolled(POD_A, status=status)}), POLICIES, None)
    assert [v.state for v in result.nodes if v.pod == POD_A] == [state]
    assert result.enroll == []  # FAIL is not re-enrolled automatically: it is sticky


def test_a_running_agent_without_a_registration_leaves_its_node_unregistered():
    result = plan(snapshot([]), POLICIES, None)
    assert {v.pod.node: v.state for v in result.nodes} == {"node-a": "UNREGISTERED", "node-b": "UNREGISTERED"}


def test_an_empty_policy_is_refused_before_anything_is_decided():
    with pytest.raises(ValueError, match="names no PCR"):
        Policies.parse("{}")


def test_the_controller_names_every_configuration_problem_at_once(tmp_path):
    from controller.__main__ import Config, ConfigError

    clusters = tmp_path / "clusters.json"
    clusters.write_text("[]")
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"CLUSTERS_FILE": str(clusters), "TAINT_EFFECT": "NoWay", "INTERVAL_SECONDS": "-1",
                         "REGISTRAR_URL": "https://r:8891"})
    message = str(refused.value)
    for expected in ("TAINT_EFFECT: got 'NoWay'; allowed: NoSchedule, PreferNoSchedule, NoExecute",
                     "INTERVAL_SECONDS: got '-1'; allowed: a positive number", "CLUSTERS_FILE: ", "not a non-empty JSON object",
                     "VERIFIER_URL: required", "POLICY_FILE: required"):
        assert expected in message
    assert "REGISTRAR_URL" not in message
