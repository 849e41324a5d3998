"""The cluster stack as declared: the user's clusters through their kubeconfig, replicated servers on PostgreSQL,
agents on the labelled TPM nodes, nothing of Kind or libvirt, and the kubeconfig never in plain sight."""

from __future__ import annotations

import json

import pytest
from helpers import kube_objects, pod_spec

from tools.example import CLUSTER, cluster_config
from tools.offline import ProgramRun, Secret, is_secret, run_program

EXTERNAL_URL = "postgresql+psycopg2://keylime:pw@db.example.com:5432/keylime"


@pytest.fixture(scope="module")
def cluster() -> ProgramRun:
    return run_program("cluster", CLUSTER)


def deployment(run: ProgramRun, component: str):
    (found,) = [d for d in kube_objects(run, "Deployment", "servers") if d.plain["metadata"]["name"] == f"keylime-{component}"]
    return found


def test_nothing_of_kind_or_libvirt_is_declared(cluster):
    assert not [r for r in cluster.resources if r.type.startswith("libvirt:")]
    commands = [r.plain.get("create", "") for r in cluster.resources if r.type == "command:local:Command"]
    assert commands and not [c for c in commands if "kind-cluster.sh" in c or "vm-" in c]


def test_each_context_gets_a_provider_with_the_secret_kubeconfig_and_its_context(cluster):
    providers = {r.name: r for r in cluster.resources if r.type == "pulumi:providers:kubernetes"}
    assert set(providers) == {"servers-k8s", "agents-datacenter-k8s", "agents-edge-k8s"}
    for name, context in (("servers-k8s", "datacenter"), ("agents-datacenter-k8s", "datacenter"), ("agents-edge-k8s", "edge")):
        assert is_secret(providers[name].inputs["kubeconfig"])
        assert providers[name].plain["context"] == context


def test_the_kubeconfig_is_never_a_plain_output_or_a_plain_input(cluster):
    token = "example-token-not-real"
    assert cluster.outputs["infraKubeconfig"].secret
    assert all(token not in json.dumps(output.value) for output in cluster.outputs.values() if not output.secret)
    for resource in cluster.resources:
        for key, value in resource.inputs.items():
            assert token not in json.dumps(value, default=str) or is_secret(value), (resource.name, key)


def test_registrar_and_verifier_are_replicated_on_postgresql(run):
    program = run("cluster", **cluster_config(registrarReplicas=3, verifierReplicas=4))
    assert deployment(program, "registrar").plain["spec"]["replicas"] == 3
    assert deployment(program, "verifier").plain["spec"]["replicas"] == 4
    (database,) = kube_objects(program, "StatefulSet", "servers")
    assert database.plain["metadata"]["name"] == "keylime-postgres"
    (container,) = pod_spec(deployment(program, "verifier"))["containers"]
    url = next(item for item in container["env"] if item["name"] == "KEYLIME_VERIFIER_DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"]["name"] == "keylime-database"


def test_an_external_database_replaces_the_in_cluster_one(run):
    program = run("cluster", **cluster_config(databaseUrl=Secret(EXTERNAL_URL)))
    assert kube_objects(program, "StatefulSet", "servers") == []
    (secret,) = [s for s in kube_objects(program, "Secret", "servers") if s.plain["metadata"]["name"] == "keylime-database"]
    assert set(secret.plain["stringData"].values()) == {EXTERNAL_URL}
    assert is_secret(secret.inputs["stringData"])


@pytest.mark.parametrize(("service_type", "ports"), [("LoadBalancer", {8881}), ("NodePort", {30881})])
def test_agents_reach_the_verifier_through_the_configured_service_pinned_to_one_pod(run, service_type, ports):
    program = run("cluster", **cluster_config(serviceType=service_type))
    (verifier,) = [s.plain["spec"] for s in kube_objects(program, "Service", "servers")
                   if s.plain["metadata"]["name"] == "keylime-verifier"]
    assert verifier["type"] == service_type
    assert verifier["externalTrafficPolicy"] == "Local" and verifier["sessionAffinity"] == "ClientIP"
    assert {p.get("nodePort", p["port"]) for p in verifier["ports"]} == ports


def test_the_advertised_address_is_in_both_server_certificates(run):
    program = run("cluster", **cluster_config(advertisedAddress="keylime.corp.example"))
    requests = [r for r in program.resources if r.type == "tls:index/certRequest:CertRequest"]
    servers = [r for r in requests if r.name in ("pki-registrar-csr", "pki-verifier-csr")] or requests
    assert len([r for r in servers if "keylime.corp.example" in (r.plain.get("dnsNames") or [])]) == 2


def test_agents_run_on_the_labelled_nodes_of_every_agent_context(run):
    program = run("cluster", **cluster_config(agentNodeLabel="example.com/tpm=yes"))
    for cluster_name in ("agents-datacenter", "agents-edge"):
        agents = [d for d in kube_objects(program, "DaemonSet", cluster_name) if d.plain["metadata"]["name"] == "keylime-agent"]
        assert len(agents) == 1
        assert pod_spec(agents[0])["nodeSelector"] == {"example.com/tpm": "yes"}


def test_enrollment_and_the_controller_use_the_servers_context(cluster):
    enroll = cluster.named("enrollment-enroll").plain
    assert enroll["environment"]["KUBE_CONTEXT"] == "datacenter"
    assert cluster.outputs["infraContext"].value == "datacenter"
    assert enroll["environment"]["EXPECTED_AGENTS"] == "10"


def test_the_images_the_clusters_pull_are_pushed_to_the_registry(cluster):
    images = cluster.of_type("docker:index/image:Image")
    assert images and all(image.plain["imageName"].startswith("registry.example.com/keylime-push/") for image in images)
    assert all(image.plain.get("skipPush", False) is False for image in images)
    pulled = {c["image"] for d in kube_objects(cluster, "Deployment") for c in pod_spec(d)["containers"]}
    assert pulled and all(ref.startswith("registry.example.com/keylime-push/") for ref in pulled if "keylime" in ref)
