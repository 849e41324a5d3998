"""Replicated servers on a real PostgreSQL: the registrar and two verifier pods share one database.

Debian's PostgreSQL runs as a throwaway cluster (tools/lab/postgres.py); keylime 7.14.3 reaches it through
psycopg2, as the upstream images do. Each verifier pod is a process with one worker at its own loopback
address; each agent is pinned to one pod, as `sessionAffinity: ClientIP` pins it, and moves to a live pod
when its own is gone, as kube-proxy moves it (tools/lab/fleet.py). These servers listen on 127.0.1.x, so
they run beside the swtpm lab's on 127.0.0.1.

What 7.14.3 does with several verifiers, shown here:
- a pod lost mid-run costs no agent a PASS: tokens live in the database, and the lost pod's timeout
  timers die with it;
- an agent that leaves a pod that is still running gets a false TIMEOUT from that pod's per-process
  timer (push_agent_monitor.py) while it attests on time elsewhere: why each agent must stay on one
  verifier process (one worker per pod, ClientIP affinity);
- a proof-of-possession session begun on a lost pod is unknown to the others (404): the agent starts over.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tools.lab.pinned import PinnedFleet, StatusWatch
from tools.lab.push import ProtocolError
from tools.lab.servers import KeylimeInfra
from tools.lab.session import Lab, LabUnavailable

pytestmark = pytest.mark.lab

ADDRESS = "127.0.1.1"
FRESH_ADDRESS = "127.0.1.101"
AGENTS = 4
# keylime marks a push agent timed out 5 quote intervals after its last attestation (push_agent_monitor.py).
TIMEOUT_MULTIPLIER = 5
# One verifier process per pod, so that a pod's timers are the only ones an agent's attestations reset.
ONE_WORKER = {"verifier": {"max_workers": 1}}


@pytest.fixture(scope="module")
def replicated():
    value = os.environ.get("LAB_BIN")
    if not value:
        pytest.fail("LAB_BIN is not set: run the tests with `make test`", pytrace=False)
    try:
        lab = Lab("swtpm", Path(value), listen_address=ADDRESS, on_postgres=True, server_options=ONE_WORKER)
    except LabUnavailable as missing:
        pytest.fail(str(missing), pytrace=False)
    try:
        lab.infra.start_replica("verifier", 1)
        lab.infra.start_replica("registrar", 1)
        agents = [lab.new_agent(f"agent-{index}") for index in range(AGENTS)]
        for index, agent in enumerate(agents):  # half through each registrar pod
            agent.register(lab.registrar_url.replace(ADDRESS, lab.infra.replica_address(index % 2)))
        enrolled = lab.run_declared("enrollment-enroll", EXPECTED_AGENTS=str(AGENTS))
        assert enrolled.returncode == 0, enrolled.stderr
        yield lab, agents
    finally:
        lab.close()


def timeout_seconds(lab) -> float:
    return TIMEOUT_MULTIPLIER * float(lab.infra.option("verifier", "quote_interval"))


def ensure_second_pod(lab) -> None:
    if "verifier-1" not in lab.infra.processes:
        lab.infra.start_replica("verifier", 1)


def test_registrar_and_verifier_pods_share_one_postgresql(replicated):
    """Agents registered through two registrar pods; the tenant, through the Service (pod 0), enrolled all of them."""
    lab, agents = replicated
    assert lab.infra.option("verifier", "database_url") == lab.infra.option("registrar", "database_url")
    assert lab.infra.option("verifier", "database_url").startswith("postgresql+psycopg2://keylime:")
    uuids = sorted(agent.uuid for agent in agents)
    for table in ("registrarmain", "verifiermain"):
        rows = lab.postgres.sql(f"SELECT agent_id FROM {table} ORDER BY agent_id", database="keylime").split()
        assert rows == uuids, table
    # Only agents that registered there reached pod 1; the tenant and the verifier dial the Service (pod 0).
    second_pod = lab.infra.log("registrar-1").read_text()
    assert [uuid for uuid in uuids if uuid in second_pod] == sorted([agents[1].uuid, agents[3].uuid])


def test_a_verifier_pod_lost_mid_run_costs_no_agent_a_pass(replicated):
    lab, agents = replicated
    ensure_second_pod(lab)
    fleet = PinnedFleet(lab, agents, {agent.uuid: index % 2 for index, agent in enumerate(agents)})
    on_lost_pod = [agent.uuid for index, agent in enumerate(agents) if index % 2 == 1]
    reported: dict[str, str] = {}

    def ask_the_tenant_once_past_the_timeout():
        # By then a timer of the lost pod, had it survived, would have fired.
        time.sleep(timeout_seconds(lab) + 1)
        for agent in agents:
            reported[agent.uuid] = lab.infra.tenant("-c", "status", "-u", agent.uuid, "--push-model").stdout

    watch = StatusWatch(lab.postgres).start()
    try:
        fleet.run(seconds=8)
        lost_at = time.monotonic()
        lab.infra.kill("verifier-1")
        fleet.run(seconds=timeout_seconds(lab) + 12, meanwhile=ask_the_tenant_once_past_the_timeout)
    finally:
        watch.stop()
    assert fleet.errors == []
    assert sorted(move.uuid for move in fleet.moves) == sorted(on_lost_pod)
    assert all((move.from_replica, move.to_replica) == (1, 0) for move in fleet.moves)
    for index, agent in enumerate(agents):
        before = [a for a in fleet.accepted(agent.uuid) if a.started < lost_at]
        after = fleet.accepted(agent.uuid, after=lost_at)
        assert len(before) >= 2 and {a.replica for a in before} == {index % 2}, agent.uuid
        assert len(after) >= 3 and {a.replica for a in after} == {0}, agent.uuid
        first_pass = next(at for at, status in watch.seen[agent.uuid] if status == "PASS")
        assert watch.statuses(agent.uuid, after=first_pass) == ["PASS"], (agent.uuid, watch.seen[agent.uuid])
        assert '"attestation_status": "PASS"' in reported[agent.uuid], reported[agent.uuid][-1500:]


def test_an_agent_that_leaves_a_running_pod_gets_a_false_timeout_from_that_pods_timer(replicated):
    lab, agents = replicated
    ensure_second_pod(lab)
    agent = agents[0]
    fleet = PinnedFleet(lab, [agent], {agent.uuid: 0})
    watch = StatusWatch(lab.postgres).start()
    try:
        # Pod 0 first: it resets the timer pod 0 kept from the agent's earlier attestations there.
        fleet.clients[agent.uuid].attest_times(1)
        fleet.pin(agent.uuid, 1)
        fleet.clients[agent.uuid].attest_times(1)
        left_at = time.monotonic()
        fleet.pin(agent.uuid, 0)  # its affinity changed (source address, affinity timeout), pod 1 still runs
        fleet.run(seconds=timeout_seconds(lab) + 4)
    finally:
        watch.stop()
    accepted = fleet.accepted(agent.uuid, after=left_at)
    assert {a.replica for a in accepted} == {0}
    gaps = [later.started - earlier.started for earlier, later in zip(accepted, accepted[1:], strict=False)]
    assert gaps and max(gaps) < timeout_seconds(lab) / 2  # on time, all along
    assert watch.statuses(agent.uuid, after=left_at) == ["PASS", "TIMEOUT", "PASS"], watch.seen[agent.uuid]
    timed_out = f"Agent {agent.uuid} has timed out (no attestation received within {timeout_seconds(lab):.1f} seconds)"
    assert timed_out in lab.infra.log("verifier-1").read_text()
    assert timed_out not in lab.infra.log("verifier").read_text()


def test_a_proof_of_possession_begun_on_a_lost_pod_is_unknown_to_the_other_and_starts_over(replicated):
    lab, agents = replicated
    ensure_second_pod(lab)
    client = lab.push_client(agents[1], replica=1)
    client.token = None
    session_id, challenge = client.begin_session()
    lab.infra.kill("verifier-1")
    client.connect_to = lab.infra.replica_address(0)
    with pytest.raises(ProtocolError) as unknown:
        client.complete_session(session_id, challenge)
    assert unknown.value.status == 404
    assert client.authenticate()
    assert client.attest_times(1)


def test_registrar_pods_that_start_together_on_an_empty_database_are_all_up_after_one_restart_each(replicated):
    """Each pod migrates the schema at start (auto_migrate_db): pods starting together on an empty database
    race on it, and a loser exits on a duplicate of what the winner created (seen: 2 of 3). The kubelet
    restarts it, and on the schema now there it starts."""
    lab, _ = replicated
    pods = KeylimeInfra(lab.root / "fresh", lab.lab_bin, lab.infra_cluster, lab.pki.real, FRESH_ADDRESS,
                        lab.postgres.create_database("fresh"))
    try:
        names = {pods.spawn_replica("registrar", replica): replica for replica in range(3)}
        outcome: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while len(outcome) < len(names) and time.monotonic() < deadline:
            for name, replica in names.items():
                if name not in outcome and pods.processes[name].poll() is not None:
                    outcome[name] = "exited"
                elif name not in outcome and pods.listening(name, pods.replica_address(replica), "registrar"):
                    outcome[name] = "listening"
            time.sleep(0.2)
        assert len(outcome) == len(names) and "listening" in outcome.values(), outcome
        for name in [name for name, result in outcome.items() if result == "exited"]:
            assert "already exists" in pods.log(name).read_text(), pods.tail(name)
            del pods.processes[name]
            pods.start_replica("registrar", names[name])  # the kubelet's restart
        assert all(pods.listening(name, pods.replica_address(replica), "registrar") for name, replica in names.items())
    finally:
        pods.stop()
