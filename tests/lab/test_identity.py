"""An agent's identity lives as long as its node: a replaced agent pod comes back as the same agent.

Each test runs an agent on a node of its own (the node prepared by the program's node-state Command)
and replaces its pod with a new one from the declared DaemonSet, as a rollout, an upgrade or a deleted
pod would: fresh emptyDirs, the node's hostPaths as they were. The registrar, verifier and tenant are the
real ones; the agent is enrolled with the declared TPM policy and the verifier's own record is read.
"""

from __future__ import annotations

import pytest

from tools.lab.agent import RegistrationRefused

from .steps import command, registrar_view, verifier_view

pytestmark = pytest.mark.lab


@pytest.fixture
def new_agent(lab, infra):
    """new_agent(node): an agent on a node of its own. The registrations and enrollments it made go at the
    end, so that later tests (whose enrollment Command enrolls every registered agent) never see it."""
    made = []

    def make(node: str):
        made.append(lab.new_agent(node))
        return made[-1]

    yield make
    for agent in made:
        infra.tenant("-c", "delete", "-u", agent.uuid, "--push-model")
        infra.tenant("-c", "regdelete", "-u", agent.uuid)
        agent.stop()


def test_a_replaced_agent_pod_keeps_its_uuid_and_ak_re_registers_and_attests_without_a_new_enrollment(
    lab, infra, new_agent
):
    agent = new_agent("rollout")
    agent.register(lab.registrar_url)
    uuid, ak = agent.uuid, agent.file_b64("ak.pub")
    policy = command(lab.program, "enrollment-enroll")["environment"]["TPM_POLICY"]
    # Enrolled alone, with the declared policy: the declared Commands look at every agent the shared lab's
    # registrar knows, so the verifier's own record of this agent is what the test reads.
    added = infra.tenant("-c", "add", "--push-model", "-u", uuid, "--tpm_policy", policy)
    assert added.returncode == 0, added.stdout + added.stderr
    lab.push_client(agent).attest_times(1)
    before = verifier_view(infra, uuid)
    # a None record (the verifier does not know the agent) fails the test here, as it should
    assert before["attestation_status"] == "PASS"  # type: ignore[index]

    agent.restart(lab.agent_pod_on("rollout"))

    assert "already initialised" in agent.last_init_output
    assert (agent.uuid, agent.file_b64("ak.pub")) == (uuid, ak)
    agent.register(lab.registrar_url)  # the registrar accepts the same EK and AK again
    record = registrar_view(infra, uuid)
    assert record["regcount"] == 2 and record["aik_tpm"] == ak
    lab.push_client(agent).attest_times(1)  # a new PoP session with the same AK, no `add` in between
    after = verifier_view(infra, uuid)
    assert after["attestation_status"] == "PASS"  # type: ignore[index]  # None fails the test, as it should
    # a None record (the verifier does not know the agent) fails the test here, as it should
    assert after["attestation_count"] > before["attestation_count"]  # type: ignore[index]


def test_an_agent_that_lost_its_ak_is_refused_by_the_registrar_for_good(lab, infra, new_agent):
    """What persisting agent_data.json prevents: the same EK (same hash_ek UUID) with a new AK is a 403."""
    agent = new_agent("lost-ak")
    agent.register(lab.registrar_url)
    uuid, ak = agent.uuid, agent.file_b64("ak.pub")

    agent.restart(lab.agent_pod_on("lost-ak"), keep_agent_data=False)

    assert agent.uuid == uuid and agent.file_b64("ak.pub") != ak
    with pytest.raises(RegistrationRefused) as refused:
        agent.register(lab.registrar_url)
    assert refused.value.status == 403
    assert registrar_view(infra, uuid)["aik_tpm"] == ak


def test_the_software_tpm_restarted_on_its_nodes_state_has_the_same_ek_and_ek_certificate(lab, new_agent):
    agent = new_agent("tpm-restart")
    certified = (agent.workdir / "certified-ek.pem").read_bytes()
    ek_cert, uuid = agent.ek_cert, agent.uuid

    agent.restart(lab.agent_pod_on("tpm-restart"))

    assert "already initialised" in agent.last_init_output
    assert (agent.workdir / "certified-ek.pem").read_bytes() == certified
    assert (agent.ek_cert, agent.uuid) == (ek_cert, uuid)
