"""The infra cluster's workloads as declared: push-mode verifier, NodePorts, keys only in Secrets."""

from __future__ import annotations

import configparser

import pulumi
import pulumi_command as command
import pulumi_docker as docker
import pytest
import yaml
from helpers import all_containers, certificates, env_of, kube_objects, pod_spec

from components import keylime_conf
from components.images import SERVER_COMPONENTS, BuiltImage
from components.infra_cluster import InfraCluster, InfraClusterArgs
from components.keylime_servers import CONFIG_MAP
from tools.offline import ProgramRun, is_secret, run_declarations


def deployment(run, component: str, cluster: str = "infra"):
    (found,) = [d for d in kube_objects(run, "Deployment", cluster) if d.plain["metadata"]["name"] == f"keylime-{component}"]
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
    (config,) = [c for c in kube_objects(swtpm, "ConfigMap", "infra") if c.plain["metadata"]["name"] == "keylime-config"]
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
    for config_map in kube_objects(swtpm, "ConfigMap"):
        assert "PRIVATE KEY" not in str(config_map.plain)
    secrets = {s.plain["metadata"]["name"]: s for s in kube_objects(swtpm, "Secret", "infra")}
    # The EK trust store holds only the TPM manufacturer CA's certificate (requireEkCert): nothing to hide.
    ek_trust = secrets.pop("keylime-attestation-controller-ek-trust")
    assert "PRIVATE KEY" not in str(ek_trust.plain["stringData"])
    assert set(secrets) == {
        "keylime-registrar-tls", "keylime-verifier-tls", "keylime-tenant-tls",
        "keylime-attestation-controller-tls", "keylime-attestation-controller-clusters",
    }
    for secret in secrets.values():
        assert is_secret(secret.inputs["stringData"])
    assert "server-private.pem" in secrets["keylime-registrar-tls"].plain["stringData"]
    assert "client-private.pem" in secrets["keylime-verifier-tls"].plain["stringData"]
    assert "server-private.pem" not in secrets["keylime-tenant-tls"].plain["stringData"]
    assert "client-private.pem" in secrets["keylime-attestation-controller-tls"].plain["stringData"]


@pytest.mark.parametrize("component", ["registrar", "verifier", "tenant"])
def test_servers_are_non_root_with_limits_and_runtime_default_seccomp(swtpm, component):
    workload = deployment(swtpm, component)
    assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True
    for container in all_containers(workload):
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_sqlite_state_is_on_a_claim_with_one_writer_and_pods_are_replaced_not_overlapped(request, stack):
    """sqlite has one writer: one pod, and a rollout stops the old pod before the new one opens the file."""
    program = request.getfixturevalue(stack)
    claims = {c.plain["metadata"]["name"] for c in kube_objects(program, "PersistentVolumeClaim", "infra")}
    assert claims == {"keylime-registrar-data", "keylime-verifier-data"}
    for component in ("registrar", "verifier"):
        workload = deployment(program, component)
        (config,) = [c for c in kube_objects(program, "ConfigMap", "infra") if c.plain["metadata"]["name"] == CONFIG_MAP]
        parsed = configparser.RawConfigParser()
        parsed.read_string(config.plain["data"][f"{component}.conf"])
        assert parsed[component]["database_url"].startswith("sqlite:///")
        assert workload.plain["spec"]["replicas"] == 1
        assert workload.plain["spec"]["strategy"] == {"type": "Recreate"}
        data = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "data")
        assert data["persistentVolumeClaim"]["claimName"] == f"keylime-{component}-data"


def test_only_the_server_ports_accept_connections(swtpm):
    specs = {p.plain["metadata"]["name"]: p.plain["spec"] for p in kube_objects(swtpm, "NetworkPolicy", "infra")}
    assert specs["keylime-default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    ports = {name: [p["port"] for rule in spec.get("ingress", []) for p in rule["ports"]] for name, spec in specs.items()}
    assert ports == {
        "keylime-default-deny-ingress": [],
        "keylime-registrar-ingress": [8890, 8891],
        "keylime-verifier-ingress": [8881],
        "keylime-attestation-controller-metrics-ingress": [9090],
    }


# --- InfraCluster alone, from its Args -------------------------------------------------------------


@pytest.fixture(scope="module")
def infra_alone() -> ProgramRun:
    """Only an InfraCluster; the image builds it loads are stand-ins, its certificates plain values."""

    def declare() -> None:
        command_provider, docker_provider = command.Provider("command"), docker.Provider("docker")
        builds = {
            component: BuiltImage(
                f"example/{component}:1",
                docker.Image(
                    f"{component}-build",
                    image_name=f"example/{component}:1",
                    skip_push=True,
                    opts=pulumi.ResourceOptions(provider=docker_provider),
                ),
            )
            for component in SERVER_COMPONENTS
        }
        InfraCluster(
            "alone",
            InfraClusterArgs(
                cluster_name="keylime-ci-infra",
                owner="keylime-push/ci",
                images=builds,
                configs={component: f"[{component}]\nalone = yes\n" for component in SERVER_COMPONENTS},
                certificates=certificates(),
                uid=1234,
                gid=2345,
                registrar_node_port=31100,
                registrar_tls_node_port=31101,
                verifier_node_port=31200,
                listen_address="198.51.100.1",
            ),
            pulumi.ResourceOptions(providers=[command_provider, docker_provider]),
        )

    return run_declarations(declare)


def test_alone_the_servers_get_exactly_the_certificates_and_configs_passed_in(infra_alone):
    secrets = {s.plain["metadata"]["name"]: s for s in kube_objects(infra_alone, "Secret", "alone")}
    assert secrets["keylime-verifier-tls"].plain["stringData"] == {
        keylime_conf.CA_CERT: "CA",
        keylime_conf.SERVER_CERT: "CERT verifier",
        keylime_conf.SERVER_KEY: "KEY verifier",
        keylime_conf.CLIENT_CERT: "CERT verifier-client",
        keylime_conf.CLIENT_KEY: "KEY verifier-client",
    }
    assert secrets["keylime-tenant-tls"].plain["stringData"][keylime_conf.CLIENT_KEY] == "KEY tenant"
    assert all(is_secret(secret.inputs["stringData"]) for secret in secrets.values())
    (config,) = kube_objects(infra_alone, "ConfigMap", "alone")
    assert config.plain["data"]["verifier.conf"] == "[verifier]\nalone = yes\n"


def test_alone_the_servers_run_the_loaded_images_as_the_given_user_on_the_given_node_ports(infra_alone):
    load = infra_alone.named("alone-images")
    assert load.plain["environment"]["IMAGES"] == "example/registrar:1 example/tenant:1 example/verifier:1"
    assert {infra_alone.named(f"{c}-build").urn for c in SERVER_COMPONENTS} <= set(load.dependencies)
    for component in SERVER_COMPONENTS:
        workload = deployment(infra_alone, component, "alone")
        (container,) = pod_spec(workload)["containers"]
        assert container["image"] == f"example/{component}:1"
        assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]) == (1234, 2345)
        assert load.urn in workload.dependencies
    services = {s.plain["metadata"]["name"]: s.plain["spec"] for s in kube_objects(infra_alone, "Service", "alone")}
    assert sorted(p["nodePort"] for s in services.values() for p in s["ports"]) == [31100, 31101, 31200]
    kind_config = yaml.safe_load(infra_alone.named("alone-cluster").plain["environment"]["KIND_CONFIG"])
    assert sorted(m["hostPort"] for m in kind_config["nodes"][0]["extraPortMappings"]) == [31100, 31101, 31200]
    assert {m["listenAddress"] for m in kind_config["nodes"][0]["extraPortMappings"]} == {"198.51.100.1"}
    assert kind_config["name"] == "keylime-ci-infra"
    assert infra_alone.named("alone-cluster").plain["environment"]["CLUSTER_OWNER"] == "keylime-push/ci"


def test_alone_every_object_waits_for_the_namespace_except_the_namespace(infra_alone):
    namespace = infra_alone.named("alone-namespace")
    for resource in infra_alone.resources:
        if resource.type.startswith("kubernetes:") and resource.custom and resource is not namespace:
            assert namespace.urn in resource.dependencies, resource.name


def test_alone_every_object_is_deleted_with_the_kind_cluster(infra_alone):
    cluster = infra_alone.named("alone-cluster").urn
    objects = [r for r in infra_alone.resources if r.type.startswith("kubernetes:") and r.custom]
    assert objects and all(resource.deleted_with == cluster for resource in objects)


def test_objects_deployed_before_keylime_servers_existed_keep_their_urns(swtpm):
    (infra,) = [r for r in swtpm.resources if r.type == "keylime:infra:InfraCluster"]
    (servers,) = [r for r in swtpm.resources if r.type == "keylime:servers:KeylimeServers"]
    moved = [r for r in swtpm.resources if r.parent == servers.urn]
    assert moved and all(infra.urn in r.alias_parents for r in moved)
    # The URN an alias names is the one the object had under InfraCluster: same type and name.
    assert all(r.urn.replace("keylime:servers:KeylimeServers$", "") != r.urn for r in moved)
