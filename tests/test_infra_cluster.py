"""The infra cluster's workloads as declared: push-mode verifier, NodePorts, keys only in Secrets."""

from __future__ import annotations

import configparser

import pytest
from conftest import all_containers, env_of, kube_objects, pod_spec

from components import keylime_conf


def deployment(run, component: str):
    (found,) = [d for d in kube_objects(run, "Deployment", "infra") if d.plain["metadata"]["name"] == f"keylime-{component}"]
    return found


@pytest.mark.parametrize("component", ["registrar", "verifier", "tenant"])
def test_every_keylime_pod_reads_only_its_rendered_config_and_takes_no_service_links(swtpm, component):
    spec = pod_spec(deployment(swtpm, component))
    assert spec["enableServiceLinks"] is False
    (container,) = spec["containers"]
    env = env_of(container)
    assert env[f"KEYLIME_{component.upper()}_CONFIG"] == f"{keylime_conf.CONF_DIR}/{component}.conf"
    assert not any(name.endswith("_PORT") or name.endswith("_SERVICE_HOST") for name in env)
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["items"] == [{"key": f"{component}.conf", "path": f"{component}.conf"}]


def test_the_verifier_runs_in_push_mode_by_file_and_by_environment(swtpm):
    (config,) = kube_objects(swtpm, "ConfigMap", "infra")
    verifier = configparser.RawConfigParser()
    verifier.read_string(config.plain["data"]["verifier.conf"])
    assert verifier["verifier"]["mode"] == "push"
    (container,) = pod_spec(deployment(swtpm, "verifier"))["containers"]
    assert env_of(container)["KEYLIME_VERIFIER_MODE"] == "push"


def test_probes_use_tcp_because_version_answers_410_in_push_mode(swtpm):
    for component, port in (("registrar", 8891), ("verifier", 8881)):
        (container,) = pod_spec(deployment(swtpm, component))["containers"]
        assert container["readinessProbe"]["tcpSocket"] == {"port": port}
        assert container["livenessProbe"]["tcpSocket"] == {"port": port}


def test_node_ports_follow_the_config_and_publish_the_registrar_tls_port(run):
    program = run("swtpm", registrarNodePort=31000, verifierNodePort=31500)
    services = {s.plain["metadata"]["name"]: s.plain["spec"] for s in kube_objects(program, "Service", "infra")}
    assert services["keylime-registrar"]["type"] == "NodePort"
    assert {(p["port"], p["nodePort"]) for p in services["keylime-registrar"]["ports"]} == {(8890, 31000), (8891, 31001)}
    assert {(p["port"], p["nodePort"]) for p in services["keylime-verifier"]["ports"]} == {(8881, 31500)}


def test_private_keys_live_only_in_secrets_as_pulumi_secrets(swtpm):
    from tools.offline import is_secret

    for config_map in kube_objects(swtpm, "ConfigMap"):
        assert "PRIVATE KEY" not in str(config_map.plain)
    secrets = {s.plain["metadata"]["name"]: s for s in kube_objects(swtpm, "Secret", "infra")}
    assert set(secrets) == {"keylime-registrar-tls", "keylime-verifier-tls", "keylime-tenant-tls"}
    for secret in secrets.values():
        assert is_secret(secret.inputs["stringData"])
    assert "server-private.pem" in secrets["keylime-registrar-tls"].plain["stringData"]
    assert "client-private.pem" in secrets["keylime-verifier-tls"].plain["stringData"]
    assert "server-private.pem" not in secrets["keylime-tenant-tls"].plain["stringData"]


@pytest.mark.parametrize("component", ["registrar", "verifier", "tenant"])
def test_servers_are_non_root_with_limits_and_runtime_default_seccomp(swtpm, component):
    workload = deployment(swtpm, component)
    assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True
    for container in all_containers(workload):
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["imagePullPolicy"] == "IfNotPresent"


def test_sqlite_state_is_on_a_claim_and_pods_are_replaced_not_overlapped(swtpm):
    claims = {c.plain["metadata"]["name"] for c in kube_objects(swtpm, "PersistentVolumeClaim", "infra")}
    assert claims == {"keylime-registrar-data", "keylime-verifier-data"}
    for component in ("registrar", "verifier"):
        workload = deployment(swtpm, component)
        assert workload.plain["spec"]["strategy"] == {"type": "Recreate"}
        data = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "data")
        assert data["persistentVolumeClaim"]["claimName"] == f"keylime-{component}-data"


def test_only_the_server_ports_accept_connections(swtpm):
    specs = {p.plain["metadata"]["name"]: p.plain["spec"] for p in kube_objects(swtpm, "NetworkPolicy", "infra")}
    assert specs["keylime-default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    ports = {name: [p["port"] for rule in spec.get("ingress", []) for p in rule["ports"]] for name, spec in specs.items()}
    assert ports == {"keylime-default-deny-ingress": [], "keylime-registrar-ingress": [8890, 8891], "keylime-verifier-ingress": [8881]}
