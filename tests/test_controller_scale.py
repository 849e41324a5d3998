"""A reconcile pass costs a constant number of keylime and Kubernetes calls, whatever the fleet's size.

keylime is an in-process stand-in counting calls by endpoint; each agent cluster is the HTTP stand-in of
tools/lab/kube_api.py, read with the real `kubernetes` client (so the time includes its deserialisation).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from kubernetes import client as kube_client  # type: ignore[import-untyped]  # the kubernetes client ships no types

from controller.enrollment import Policies
from controller.kube import STATUS_LABEL, Cluster
from controller.reconcile import Controller
from tools.lab.kube_api import FakeKubernetes

ZEROS = "0" * 64
POLICY = json.dumps({"8": ZEROS})
SELECTOR = {"app.kubernetes.io/name": "keylime-agent"}


class FakeKeylime:
    """Registrar and verifier in one: the methods the controller calls, counted."""

    def __init__(self) -> None:
        self.registered: dict[str, dict] = {}
        self.enrolled: dict[str, dict] = {}
        self.calls: Counter[str] = Counter()

    # registrar
    def agent_ids(self):
        self.calls["registrar list"] += 1
        return frozenset(self.registered)

    def agent(self, uuid):
        self.calls["registrar get"] += 1
        return self.registered.get(uuid)

    # verifier
    def agents(self):
        self.calls["verifier bulk"] += 1
        return {uuid: dict(record) for uuid, record in self.enrolled.items()}

    def enroll(self, uuid, aik_tpm, policies, metadata):
        self.calls["verifier enroll"] += 1
        self.enrolled[uuid] = {"attestation_status": "PENDING", "attestation_count": 0, "last_successful_attestation": 0,
                               "tpm_policy": policies.stored_tpm_policy(), "meta_data": json.dumps(dict(metadata))}

    def delete(self, uuid):
        self.calls["delete"] += 1
        self.enrolled.pop(uuid, None)

    def attest_all(self):
        for record in self.enrolled.values():
            record.update(attestation_status="PASS", attestation_count=1, last_successful_attestation=1700000000)


def fleet(agents: int, clusters: int, steady: bool = True):
    keylime = FakeKeylime()
    fakes, kube = [], {}
    for c in range(clusters):
        fake = FakeKubernetes()
        fakes.append(fake)
        name = f"agents-{c + 1}"
        for n in range(agents // clusters):
            node, address = f"node-{n}", f"10.{c}.{n // 250}.{n % 250 + 1}"
            fake.add_node(node, address)
            fake.add_pod(f"agent-{n}", "keylime", node, SELECTOR)
            uuid = f"{c:02d}{n:062x}"
            keylime.registered[uuid] = {"ip": address, "ekcert": None, "aik_tpm": "AIK"}
            if steady:  # enrolled and attesting, its node labelled so: what a pass finds once the fleet has settled
                keylime.enroll(uuid, "AIK", Policies.parse(POLICY), {"cluster": name, "node": node, "address": address})
                fake.nodes[node]["metadata"]["labels"][STATUS_LABEL] = "PASS"
        api = kube_client.ApiClient(kube_client.Configuration(host=fake.url))
        kube[name] = Cluster(name, api, "keylime", "app.kubernetes.io/name=keylime-agent")
    keylime.attest_all()
    keylime.calls.clear()
    # FakeKeylime duck-types both the registrar and the verifier
    controller = Controller(keylime, keylime, kube, lambda: Policies.parse(POLICY), None)  # type: ignore[arg-type]
    return keylime, fakes, controller


def steady_pass(agents: int, clusters: int) -> tuple[Counter, Counter, float]:
    keylime, fakes, controller = fleet(agents, clusters)
    try:
        started = time.perf_counter()
        outcome = controller.reconcile()
        seconds = time.perf_counter() - started
        assert outcome.errors == [] and {v.state for v in outcome.plan.nodes} == {"PASS"}
        assert len(outcome.plan.nodes) == agents
        return Counter(keylime.calls), sum((fake.calls for fake in fakes), Counter()), seconds
    finally:
        for fake in fakes:
            fake.close()


@pytest.mark.parametrize("clusters", [1, 4])
def test_a_steady_pass_costs_the_same_calls_for_ten_agents_as_for_a_thousand(clusters):
    small = steady_pass(12, clusters)
    large = steady_pass(1200 if clusters == 4 else 1000, clusters)
    assert small[0] == large[0] == Counter({"registrar list": 1, "verifier bulk": 1})
    assert small[1] == large[1] == Counter({"list pods": clusters, "list nodes": clusters})


def test_a_pass_over_a_thousand_agents_takes_under_a_few_seconds(capsys):
    _, _, seconds = steady_pass(1000, 1)
    with capsys.disabled():
        print(f"\none steady reconcile pass over 1,000 agents: {seconds:.2f} s")
    assert seconds < 10


def test_a_first_pass_costs_one_registrar_read_and_one_enrollment_per_new_agent_and_no_more():
    keylime, fakes, controller = fleet(40, 2, steady=False)
    try:
        outcome = controller.reconcile()
        assert outcome.errors == []
        assert keylime.calls == Counter({"registrar list": 1, "verifier bulk": 1, "registrar get": 40, "verifier enroll": 40})
        # every node is labelled PENDING: a patch, its condition and an Event per node, once
        assert sum((f.calls for f in fakes), Counter()) == Counter(
            {"list pods": 2, "list nodes": 2, "patch node": 40, "patch node status": 40, "create event": 40})
        keylime.calls.clear()
        controller.reconcile()
        assert keylime.calls == Counter({"registrar list": 1, "verifier bulk": 1})
    finally:
        for fake in fakes:
            fake.close()


def test_an_api_server_that_fails_once_is_retried_after_a_backoff_and_one_that_stays_down_is_unreachable():
    from controller.backoff import Backoff
    from controller.kube import Unreachable

    fake = FakeKubernetes()
    fake.add_node("node-0", "10.0.0.1")
    fake.add_pod("agent-0", "keylime", "node-0", SELECTOR)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        fake.down = len(slept) > 1 and fake.down  # back after the first wait

    try:
        api = kube_client.ApiClient(kube_client.Configuration(host=fake.url))
        cluster = Cluster("agents-1", api, "keylime", "app.kubernetes.io/name=keylime-agent",
                          Backoff(attempts=3, first=0.1, sleep=sleep))
        fake.down = True
        assert [pod.node for pod in cluster.agent_pods()] == ["node-0"]
        assert slept == [0.1] and fake.calls["unavailable"] == 1
        slept.clear()
        fake.down = True
        cluster.backoff.sleep = slept.append  # stays down
        with pytest.raises(Unreachable, match="cluster agents-1: list nodes: HTTP 503 .*after 3 attempts"):
            cluster.nodes()
        assert slept == [0.1, 0.2]
    finally:
        fake.close()


def test_registrations_that_never_activate_are_read_less_and_less_often_not_on_every_pass():
    keylime, fakes, controller = fleet(20, 1)
    try:
        for index in range(500):
            keylime.registered[f"ff{index:062x}"] = None  # listed, but the registrar shows it to no one (404)
        now = [1000.0]
        controller.clock = lambda: now[0]
        controller.reconcile()
        assert keylime.calls["registrar get"] == 500
        keylime.calls.clear()
        controller.reconcile()
        assert keylime.calls == Counter({"registrar list": 1, "verifier bulk": 1})
        for wait in (5, 10, 20):  # looked at again after 5 s (a pass may fall between registration and activation),
            now[0] += wait - 0.5  # then after twice as long each time
            controller.reconcile()
            assert keylime.calls["registrar get"] == 0
            now[0] += 0.5
            controller.reconcile()
            assert keylime.calls["registrar get"] == 500
            keylime.calls.clear()
    finally:
        for fake in fakes:
            fake.close()
