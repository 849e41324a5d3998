"""The attestation controller against the real keylime 7.14.3 registrar and push-mode verifier.

Agents are emulated push agents on their own software TPMs (tools/lab), each registering with the contact_ip
its node's address gives it. The agent cluster is the HTTP stand-in of tools/lab/kube_api.py, driven with the
real `kubernetes` client; every object and patch result it receives is validated against the Kubernetes 1.32
schema at the end. /metrics is scraped over HTTP after every step.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client as kube_client  # type: ignore[import-untyped]  # the kubernetes client ships no types
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from controller.__main__ import check
from controller.backoff import Backoff
from controller.ek import TrustStore
from controller.enrollment import BOOT_POLICY_METADATA, MEASURED_BOOT_PCRS, Policies
from controller.keylime import Registrar, Tls, Verifier
from controller.kube import CONDITION_TYPE, STATUS_LABEL, TAINT_KEY, Cluster
from controller.metrics import ControllerCollector
from controller.reconcile import Controller
from tools.lab.kube_api import FakeKubernetes

pytestmark = pytest.mark.lab

ZEROS = "0" * 64
NAMESPACE, SELECTOR = "keylime", {"app.kubernetes.io/name": "keylime-agent"}
CLUSTER = "keylime-agents-1"
NODES = {"node-a": "172.18.0.11", "node-b": "172.18.0.12", "node-c": "172.18.0.13"}
NOWHERE = "172.18.0.99"


def tls_files(infra) -> Tls:
    tls_dir = Path(infra.option("tenant", "tls_dir"))
    ca = json.loads(infra.option("tenant", "trusted_server_ca"))[0]
    return Tls(str(tls_dir / ca), str(tls_dir / infra.option("tenant", "client_cert")),
               str(tls_dir / infra.option("tenant", "client_key")))


class Scrape:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"

    def __call__(self) -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def status(self, uuid: str) -> str | None:
        found = [dict(labels)["status"] for (name, labels), value in self().items()
                 if name == "keylime_agent_status" and dict(labels)["uuid"] == uuid and value == 1]
        return found[0] if found else None

    def value(self, name: str, **labels: str) -> float | None:
        for (sample, sample_labels), value in self().items():
            if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                return value
        return None


@pytest.fixture
def world(lab, infra, tmp_path):
    fake = FakeKubernetes()
    for name, address in NODES.items():
        fake.add_node(name, address)
    configuration = kube_client.Configuration(host=fake.url)
    cluster = Cluster(CLUSTER, kube_client.ApiClient(configuration), NAMESPACE,
                      ",".join(f"{k}={v}" for k, v in SELECTOR.items()), Backoff(attempts=2, first=0.05))
    tls = tls_files(infra)
    backoff = Backoff(attempts=3, first=0.2)
    registrar = Registrar(f"https://localhost:{infra.port('registrar', 'https')}", tls, backoff)
    verifier = Verifier(f"https://localhost:{infra.port('verifier', 'https')}", tls, backoff)
    policy = {"value": json.dumps({"8": ZEROS})}
    for uuid in verifier.agents():  # what earlier lab tests enrolled (the next test that uses it enrolls it afresh)
        verifier.delete(uuid)
    a = lab.new_agent("controller-a")
    b = lab.new_agent("controller-b", foreign_ek=True)
    c = lab.new_agent("controller-c")
    d = lab.new_agent("controller-d")
    store = tmp_path / "ek-trust"
    store.mkdir()
    # The program's TPM manufacturer CA, which signed a's, c's and d's EKs in swtpm-init.sh; b's TPM signed its own.
    (store / "tpm-manufacturer.pem").write_text(lab.pki.output("pki-tpm-manufacturer-ca"))
    controller = Controller(registrar, verifier, {CLUSTER: cluster}, lambda: Policies.parse(policy["value"]),
                            TrustStore.load(store))
    registry = CollectorRegistry()
    collector = ControllerCollector(lambda: controller.last)
    registry.register(collector)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)

    def reconcile():
        outcome = controller.reconcile()
        collector.counted(outcome)
        return outcome

    yield {"fake": fake, "controller": controller, "reconcile": reconcile, "policy": policy, "agents": (a, b, c, d),
           "scrape": Scrape(server.server_address[1]), "verifier": verifier, "registrar": registrar}
    server.shutdown()
    fake.close()
    for agent in (a, b, c, d):
        if agent.uuid in verifier.agents():
            verifier.delete(agent.uuid)
        registrar.delete(agent.uuid)
    # The session's shared agent registers with no contact_ip, so the controller never judged it; say so if it did.
    if lab.agent.registered:
        assert lab.agent.uuid in registrar.agent_ids()


def test_the_controller_follows_the_fleet_and_gates_nodes(lab, world, capsys):
    fake, reconcile, scrape, verifier = world["fake"], world["reconcile"], world["scrape"], world["verifier"]
    a, b, c, d = world["agents"]

    # 1. A new agent on node-a registers and is enrolled with the policy, by no Command.
    fake.add_pod("agent-a", NAMESPACE, "node-a", SELECTOR)
    a.register(lab.registrar_url, contact_ip=NODES["node-a"])
    outcome = reconcile()
    assert [e.uuid for e in outcome.plan.enroll] == [a.uuid], outcome
    record = verifier.agents()[a.uuid]
    assert json.loads(record["meta_data"]) == {"cluster": CLUSTER, "node": "node-a", "address": NODES["node-a"]}
    assert json.loads(record["tpm_policy"])["8"] == [ZEROS]
    assert scrape.status(a.uuid) == "PENDING" and scrape.value("keylime_agents_enrolled") == 1

    # 2. It attests: PASS, and the node says so.
    client_a = lab.push_client(a)
    client_a.attest_times(2)
    settled(verifier, a.uuid, lambda r: int(r["attestation_count"]) >= 2)
    reconcile()
    assert fake.label("node-a", STATUS_LABEL) == "PASS" and fake.taints("node-a") == []
    assert fake.condition("node-a", CONDITION_TYPE)["status"] == "True"
    assert scrape.status(a.uuid) == "PASS" and scrape.value("keylime_agent_attestation_count", uuid=a.uuid) >= 2
    # `python -m controller check`, what `pulumi up` and `make verify` end with, accepts it.
    assert check(world["controller"], wait=1, poll=0.2) == 0

    # 3. A policy change re-enrolls it; it passes under the new policy.
    world["policy"]["value"] = json.dumps({"8": ZEROS, "9": ZEROS})
    outcome = reconcile()
    assert [(e.uuid, e.replace) for e in outcome.plan.enroll] == [(a.uuid, True)]
    assert json.loads(verifier.agents()[a.uuid]["tpm_policy"])["9"] == [ZEROS]
    client_a.attest_times(1)
    settled(verifier, a.uuid, lambda r: r["attestation_status"] == "PASS")
    reconcile()
    assert scrape.status(a.uuid) == "PASS"

    # 4. A PCR extended: FAIL, the node is tainted, labelled, its condition false, one Event.
    a.extend_pcr(8, "ee" * 32)
    client_a.attest_times(1)
    settled(verifier, a.uuid, lambda r: r["attestation_status"] == "FAIL")
    events_before = len(fake.events)
    reconcile()
    assert fake.taints("node-a") == [{"key": TAINT_KEY, "value": "FAIL", "effect": "NoSchedule"}]
    assert fake.label("node-a", STATUS_LABEL) == "FAIL"
    assert fake.condition("node-a", CONDITION_TYPE)["status"] == "False"
    assert [e["reason"] for e in fake.events[events_before:]] == ["AttestationFailed"]
    assert scrape.status(a.uuid) == "FAIL" and scrape.value("keylime_agents_untrusted") == 1
    # FAIL is sticky: another pass neither re-enrolls nor repeats the Event; a TPM reboot does not clear it.
    a.reboot()
    outcome = reconcile()
    assert outcome.plan.enroll == [] and len(fake.events) == events_before + 1
    assert verifier.agents()[a.uuid]["attestation_status"] == "FAIL"
    # Trust comes back after an operator deletes the verifier entry: re-enrolled, it must PASS to lose the taint.
    verifier.delete(a.uuid)
    outcome = reconcile()
    assert [e.uuid for e in outcome.plan.enroll] == [a.uuid]
    assert fake.taints("node-a") != []  # PENDING keeps the taint
    client_a = lab.push_client(a)
    client_a.attest_times(1)
    settled(verifier, a.uuid, lambda r: r["attestation_status"] == "PASS")
    reconcile()
    assert fake.taints("node-a") == [] and fake.label("node-a", STATUS_LABEL) == "PASS"
    assert scrape.status(a.uuid) == "PASS"

    # 5. The agent dies: TIMEOUT, and the node is gated within the verifier's timeout plus one poll.
    timeout = float(verifier.agents()[a.uuid]["maximum_attestation_interval"].rstrip("s"))
    poll = 1.0
    died = time.monotonic()
    while fake.label("node-a", STATUS_LABEL) != "TIMEOUT":
        assert time.monotonic() - died < timeout + poll + 5, "not gated in time"
        time.sleep(poll)
        reconcile()
    gated_after = time.monotonic() - died
    assert gated_after <= timeout + poll + 2, gated_after
    assert fake.taints("node-a") == [{"key": TAINT_KEY, "value": "TIMEOUT", "effect": "NoSchedule"}]
    assert scrape.status(a.uuid) == "TIMEOUT"

    # 6. It restarts with its identity kept (same TPM state, same AK: the day-2 persistent identity, emulated):
    #    it registers again and attests, PASS with no re-enrollment (the count carries on).
    count = int(verifier.agents()[a.uuid]["attestation_count"])
    a.reboot()
    a.register(lab.registrar_url, contact_ip=NODES["node-a"])
    lab.push_client(a).attest_times(1)
    settled(verifier, a.uuid, lambda r: int(r["attestation_count"]) > count)
    outcome = reconcile()
    assert outcome.plan.enroll == []
    assert int(verifier.agents()[a.uuid]["attestation_count"]) == count + 1
    assert fake.taints("node-a") == [] and scrape.status(a.uuid) == "PASS"

    # 7. An EK from a CA outside the trust store: not enrolled, the node refused and gated, with the reason.
    fake.add_pod("agent-b", NAMESPACE, "node-b", SELECTOR)
    b.register(lab.registrar_url, contact_ip=NODES["node-b"])
    events_before = len(fake.events)
    outcome = reconcile()
    assert b.uuid not in verifier.agents()
    assert fake.label("node-b", STATUS_LABEL) == "REFUSED"
    assert fake.taints("node-b") == [{"key": TAINT_KEY, "value": "REFUSED", "effect": "NoSchedule"}]
    (event,) = fake.events[events_before:]
    assert "not signed by a CA in the EK trust store" in event["message"] and b.uuid in event["message"]
    assert check(world["controller"], wait=0.5, poll=0.2) == 1
    assert f"{CLUSTER}/node-b: agent {b.uuid}: REFUSED: its EK certificate" in capsys.readouterr().err

    # 8. A rogue registration (an address where no agent runs) is removed; so is one claiming node-a,
    #    which agent A holds by attesting, with an Event on node-a.
    c.register(lab.registrar_url, contact_ip=NOWHERE)
    reconcile()
    assert c.uuid not in world["registrar"].agent_ids()
    c.register(lab.registrar_url, contact_ip=NODES["node-a"])
    lab.push_client(a).attest_times(1)
    settled(verifier, a.uuid, lambda r: r["attestation_status"] == "PASS")
    events_before = len(fake.events)
    reconcile()
    assert c.uuid not in world["registrar"].agent_ids() and c.uuid not in verifier.agents()
    assert [e["reason"] for e in fake.events[events_before:]] == ["ConflictingRegistration"]
    assert fake.label("node-a", STATUS_LABEL) == "PASS"

    # 9. A stale one: enrolled on node-c, then its pod goes (scale-down): removed from verifier and registrar.
    fake.add_pod("agent-d", NAMESPACE, "node-c", SELECTOR)
    d.register(lab.registrar_url, contact_ip=NODES["node-c"])
    reconcile()
    assert d.uuid in verifier.agents()
    fake.remove_pod("agent-d", NAMESPACE)
    reconcile()
    assert d.uuid not in verifier.agents() and d.uuid not in world["registrar"].agent_ids()

    # 10. The cluster does not answer: nothing is removed or re-labelled, and the metrics say so.
    fake.down = True
    enrolled = set(verifier.agents())
    outcome = reconcile()
    fake.down = False
    assert outcome.plan.remove == [] and set(verifier.agents()) == enrolled
    assert scrape.value("keylime_cluster_up", cluster=CLUSTER) == 0
    assert scrape.value("keylime_verifier_up") == 1 and scrape.value("keylime_registrar_up") == 1

    # Every object the controller wrote, as the API server stored it, is valid Kubernetes 1.32.
    validate(fake.written)



def test_the_controller_enrolls_with_the_measured_boot_policy_and_a_new_one_re_enrolls_every_agent(
        lab, infra, synthetic_refstate, tmp_path):
    """The controller's policy ConfigMap carries mbPolicy: an agent the controller enrolls (none of the deploy-time
    Commands) attests its boot with the UEFI event log and PASSes; a reference state the boot does not meet,
    put in its place, re-enrolls it and it FAILs with the policy's reason."""
    from components import boot_log

    fake = FakeKubernetes()
    fake.add_node("node-m", "172.18.0.31")
    fake.add_pod("agent-m", NAMESPACE, "node-m", SELECTOR)
    tls = tls_files(infra)
    backoff = Backoff(attempts=3, first=0.2)
    registrar = Registrar(f"https://localhost:{infra.port('registrar', 'https')}", tls, backoff)
    verifier = Verifier(f"https://localhost:{infra.port('verifier', 'https')}", tls, backoff)
    cluster = Cluster(CLUSTER, kube_client.ApiClient(kube_client.Configuration(host=fake.url)), NAMESPACE,
                      ",".join(f"{k}={v}" for k, v in SELECTOR.items()), Backoff(attempts=2, first=0.05))
    # What the ConfigMap mounts: tpm_policy.json and mb_policy.json, re-read every pass (controller/__main__.py).
    mb_policy = {"value": synthetic_refstate}
    controller = Controller(registrar, verifier, {CLUSTER: cluster}, lambda: Policies.parse("{}", mb_policy["value"]),
                            None)
    log = tmp_path / "boot.bin"
    log.write_bytes(boot_log.encode(boot_log.synthetic_boot()))
    agent = lab.new_agent("controller-m")
    try:
        agent.measure_boot(log.read_bytes())
        agent.register(lab.registrar_url, contact_ip="172.18.0.31")
        outcome = controller.reconcile()
        assert [(e.uuid, e.replace) for e in outcome.plan.enroll] == [(agent.uuid, False)]
        record = verifier.agents()[agent.uuid]
        assert record["has_mb_refstate"] == 1
        enrolled_with = Policies.parse("{}", synthetic_refstate)
        assert json.loads(record["meta_data"])[BOOT_POLICY_METADATA] == enrolled_with.boot_digest
        outcomes = lab.push_client(agent, uefi_log=log).attest_times(2)
        # The verifier asked for the boot PCRs and the event log: it judges the boot, not a PCR list of ours.
        assert [o.selected_pcrs for o in outcomes] == [list(MEASURED_BOOT_PCRS)] * 2
        settled(verifier, agent.uuid, lambda r: r["attestation_status"] == "PASS")
        assert controller.reconcile().plan.enroll == []
        assert fake.label("node-m", STATUS_LABEL) == "PASS" and fake.taints("node-m") == []

        # A reference state whose kernel is not the one this boot loaded: the agent is re-enrolled with it.
        refused = json.loads(synthetic_refstate)
        refused["kernels"][0]["kernel_cmdline"] = r"/vmlinuz\-6\.9\.0\-unreviewed .*"
        mb_policy["value"] = json.dumps(refused)
        outcome = controller.reconcile()
        assert [(e.uuid, e.replace) for e in outcome.plan.enroll] == [(agent.uuid, True)]
        (verdict,) = outcome.plan.nodes
        assert verdict.reason.startswith("re-enrolling: enrolled with another measured-boot policy"), verdict
        record = verifier.agents()[agent.uuid]
        assert json.loads(record["meta_data"])[BOOT_POLICY_METADATA] == Policies.parse("{}", mb_policy["value"]).boot_digest
        lab.push_client(agent, uefi_log=log).attest()
        settled(verifier, agent.uuid, lambda r: r["attestation_status"] == "FAIL")
        assert controller.reconcile().plan.enroll == []  # FAIL is sticky: no re-enrollment on the same policy
        assert fake.label("node-m", STATUS_LABEL) == "FAIL"
        assert fake.taints("node-m") == [{"key": TAINT_KEY, "value": "FAIL", "effect": "NoSchedule"}]
        assert f"Boot attestation failed for agent {agent.uuid}, policy example" in infra.tail("verifier", 400)
    finally:
        fake.close()
        if agent.uuid in verifier.agents():
            verifier.delete(agent.uuid)
        registrar.delete(agent.uuid)

def settled(verifier, uuid: str, condition, seconds: float = 15) -> dict:
    """The verifier's record once `condition` holds: it verifies evidence after answering 202."""
    deadline = time.monotonic() + seconds
    while True:
        record = verifier.agents()[uuid]
        if condition(record):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


def validate(objects: list[dict]) -> None:
    import os
    import tempfile

    validators = Path(os.environ["VALIDATORS_BIN"])
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for index, document in enumerate(objects):
            path = Path(directory) / f"{index:03d}-{document['kind']}.json"
            path.write_text(json.dumps(document))
            paths.append(str(path))
        result = subprocess.run([str(validators / "kubernetes-validate"), "--strict", "-k", "1.32.0", "--quiet", *paths],
                                capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {document["kind"] for document in objects} == {"Node", "Event"}


def test_the_controller_program_runs_from_its_configuration_alone(lab, infra, tmp_path):
    """`python -m controller run` as a process: configured by environment and files only (as its pod would be),
    it enrolls a new agent, labels the node and serves /metrics, on its own schedule."""
    import os
    import signal
    import socket
    import sys

    fake = FakeKubernetes()
    fake.add_node("node-e", "172.18.0.21")
    fake.add_pod("agent-e", NAMESPACE, "node-e", SELECTOR)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "controller", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "controller"}}],
    }))
    (tmp_path / "clusters.json").write_text(json.dumps({CLUSTER: str(kubeconfig)}))
    (tmp_path / "policy.json").write_text(json.dumps({"8": ZEROS}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tls = tls_files(infra)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "REGISTRAR_URL": f"https://localhost:{infra.port('registrar', 'https')}",
           "VERIFIER_URL": f"https://localhost:{infra.port('verifier', 'https')}",
           "KEYLIME_CA": tls.ca, "CLIENT_CERT": tls.cert, "CLIENT_KEY": tls.key,
           "POLICY_FILE": str(tmp_path / "policy.json"), "CLUSTERS_FILE": str(tmp_path / "clusters.json"),
           "AGENT_NAMESPACE": NAMESPACE, "INTERVAL_SECONDS": "0.5", "METRICS_PORT": str(port)}
    agent = lab.new_agent("controller-e")
    verifier = Verifier(env["VERIFIER_URL"], tls)
    process = subprocess.Popen([sys.executable, "-m", "controller", "run"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        agent.register(lab.registrar_url, contact_ip="172.18.0.21")
        scrape = Scrape(port)
        deadline = time.monotonic() + 30
        while fake.label("node-e", STATUS_LABEL) != "PENDING":
            assert process.poll() is None and time.monotonic() < deadline, "the controller did not enroll the agent"
            time.sleep(0.3)
        assert json.loads(verifier.agents()[agent.uuid]["meta_data"])["node"] == "node-e"
        lab.push_client(agent).attest_times(1)
        while fake.label("node-e", STATUS_LABEL) != "PASS":
            assert process.poll() is None and time.monotonic() < deadline, "the node never became PASS"
            time.sleep(0.3)
        while scrape.status(agent.uuid) != "PASS":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        # a missing metric (None) fails the test here, as it should
        assert scrape.value("keylime_controller_reconciles_total") >= 2  # type: ignore[operator]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
        fake.close()
        verifier.delete(agent.uuid)
        Registrar(env["REGISTRAR_URL"], tls).delete(agent.uuid)
    assert f"enrolling {agent.uuid} on {CLUSTER}/node-e" in output
