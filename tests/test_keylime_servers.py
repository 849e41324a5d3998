"""KeylimeServers built alone from its Args: what each database and each exposure declares on the cluster."""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s
import pytest
from helpers import certificates, kube_objects, pod_spec

from components import keylime_conf
from components.images import SERVER_COMPONENTS
from components.keylime_servers import (
    AFFINITY_TIMEOUT_SECONDS,
    Database,
    Exposure,
    KeylimeServers,
    KeylimeServersArgs,
    NodePorts,
    PostgresDatabase,
    SqliteDatabase,
    keylime_namespace,
)
from components.rollout import INPUTS_ANNOTATION
from tools.offline import ProgramRun, run_declarations

PASSWORD = "database-password-0f8e"
NODE_PORTS = NodePorts(registrar=31100, registrar_tls=31101, verifier=31200)
ON_KIND = Exposure("NodePort", NODE_PORTS)
BEHIND_LOAD_BALANCER = Exposure("LoadBalancer", pin_agents=True)


def database_url(user: str) -> str:
    return f"postgresql+psycopg2://{user}:{PASSWORD}@keylime-postgres.keylime.svc:5432/keylime"


POSTGRES = PostgresDatabase(
    secret_name="keylime-database",
    registrar_url_key="registrar-url",
    verifier_url_key="verifier-url",
    registrar_url=database_url("registrar"),
    verifier_url=database_url("verifier"),
    registrar_replicas=2,
    verifier_replicas=3,
)


def build(database: Database, exposure: Exposure, on_kind: bool) -> ProgramRun:
    """Only KeylimeServers, on a provider of its own; with `on_kind` deleted with a stand-in for the Kind cluster.
    A Command stands in for what the pods wait for (loaded images, a running database)."""

    def declare() -> None:
        local = pulumi.ResourceOptions(provider=command.Provider("command"))
        cluster = command.local.Command("cluster", create="true", opts=local) if on_kind else None
        ready = command.local.Command("ready", create="true", opts=local)
        on_cluster = pulumi.ResourceOptions(provider=k8s.Provider("servers-k8s", kubeconfig="{}"), deleted_with=cluster)
        KeylimeServers(
            "servers",
            KeylimeServersArgs(
                images={component: f"registry.example/{component}:1" for component in SERVER_COMPONENTS},
                configs={component: f"[{component}]\nalone = yes\n" for component in SERVER_COMPONENTS},
                certificates=certificates(),
                uid=1234,
                gid=2345,
                namespace=keylime_namespace("servers", on_cluster),
                exposure=exposure,
                database=database,
                deleted_with=cluster,
                ready=[ready],
            ),
            on_cluster,
        )

    return run_declarations(declare)


@pytest.fixture(scope="module")
def sqlite() -> ProgramRun:
    return build(SqliteDatabase(), ON_KIND, on_kind=True)


def replicated_on_postgres() -> ProgramRun:
    return build(POSTGRES, BEHIND_LOAD_BALANCER, on_kind=False)


@pytest.fixture(scope="module")
def postgres() -> ProgramRun:
    return replicated_on_postgres()


def objects(run: ProgramRun) -> list:
    """The Kubernetes objects KeylimeServers declares (not the namespace, which the caller declares)."""
    (servers,) = run.of_type("keylime:servers:KeylimeServers")
    return [r for r in run.resources if r.type.startswith("kubernetes:") and r.custom and r.parent == servers.urn]


def named(run: ProgramRun, kind: str, name: str):
    (found,) = [o for o in kube_objects(run, kind, "servers") if o.plain["metadata"]["name"] == name]
    return found


def deployment(run: ProgramRun, component: str):
    return named(run, "Deployment", f"keylime-{component}")


def services(run: ProgramRun) -> dict[str, dict]:
    return {s.plain["metadata"]["name"]: s.plain["spec"] for s in kube_objects(run, "Service", "servers")}


def annotation(run: ProgramRun, component: str) -> str:
    return deployment(run, component).plain["spec"]["template"]["metadata"]["annotations"][INPUTS_ANNOTATION]


def test_every_object_goes_through_the_provider_given_in_the_options(postgres):
    assert len(objects(postgres)) > 10
    assert {r.provider.split("::")[-2] for r in objects(postgres)} == {"servers-k8s"}


def test_on_sqlite_each_server_is_one_pod_on_its_claim_replaced_not_overlapped(sqlite):
    claims = {c.plain["metadata"]["name"] for c in kube_objects(sqlite, "PersistentVolumeClaim", "servers")}
    assert claims == {"keylime-registrar-data", "keylime-verifier-data"}
    for component in ("registrar", "verifier"):
        workload = deployment(sqlite, component)
        assert workload.plain["spec"]["replicas"] == 1
        assert workload.plain["spec"]["strategy"] == {"type": "Recreate"}
        data = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "data")
        assert data["persistentVolumeClaim"]["claimName"] == f"keylime-{component}-data"
        assert "topologySpreadConstraints" not in pod_spec(workload)
    # One replica: a budget would either block every drain or allow nothing it does not already allow.
    assert kube_objects(sqlite, "PodDisruptionBudget") == []


def test_on_postgres_servers_are_replicated_rolled_one_surge_at_a_time_and_spread_over_nodes(postgres):
    assert kube_objects(postgres, "PersistentVolumeClaim") == []
    for component, replicas in (("registrar", 2), ("verifier", 3)):
        workload = deployment(postgres, component)
        assert workload.plain["spec"]["replicas"] == replicas
        assert workload.plain["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }
        spec = pod_spec(workload)
        assert next(v for v in spec["volumes"] if v["name"] == "data") == {"name": "data", "emptyDir": {"sizeLimit": "64Mi"}}
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["labelSelector"]["matchLabels"] == workload.plain["spec"]["template"]["metadata"]["labels"]
    tenant = deployment(postgres, "tenant")
    assert (tenant.plain["spec"]["replicas"], tenant.plain["spec"]["strategy"]) == (1, {"type": "Recreate"})


def test_on_postgres_each_replicated_server_has_a_budget_of_one_pod_down_for_its_own_pods(postgres):
    budgets = {b.plain["metadata"]["name"]: b.plain["spec"] for b in kube_objects(postgres, "PodDisruptionBudget")}
    assert set(budgets) == {"keylime-registrar", "keylime-verifier"}
    for component in ("registrar", "verifier"):
        assert budgets[f"keylime-{component}"]["maxUnavailable"] == 1
        pod_labels = deployment(postgres, component).plain["spec"]["template"]["metadata"]["labels"]
        assert budgets[f"keylime-{component}"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budgets[f"keylime-{component}"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_a_budget_only_where_there_is_more_than_one_replica():
    run = build(dataclasses.replace(POSTGRES, registrar_replicas=1), BEHIND_LOAD_BALANCER, on_kind=False)
    budgets = [b.plain["metadata"]["name"] for b in kube_objects(run, "PodDisruptionBudget")]
    assert budgets == ["keylime-verifier"]
    assert deployment(run, "registrar").plain["spec"]["replicas"] == 1
    assert "topologySpreadConstraints" not in pod_spec(deployment(run, "registrar"))


def test_on_postgres_each_server_reads_its_url_from_the_secret_and_the_password_is_nowhere_else(postgres):
    for component, key in (("registrar", "registrar-url"), ("verifier", "verifier-url")):
        (container,) = pod_spec(deployment(postgres, component))["containers"]
        (url,) = [e for e in container["env"] if e["name"] == f"KEYLIME_{component.upper()}_DATABASE_URL"]
        assert url == {
            "name": f"KEYLIME_{component.upper()}_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "keylime-database", "key": key}},
        }
    (tenant,) = pod_spec(deployment(postgres, "tenant"))["containers"]
    assert not any("DATABASE" in e["name"] for e in tenant["env"])
    # Not in a ConfigMap, an env value, an annotation, nor a Secret of this component's.
    for resource in postgres.resources:
        assert PASSWORD not in str(resource.plain), resource.name


def test_the_pods_roll_when_the_database_secret_key_or_url_they_read_changes(postgres):
    again = build(POSTGRES, BEHIND_LOAD_BALANCER, on_kind=False)
    assert [annotation(again, c) for c in SERVER_COMPONENTS] == [annotation(postgres, c) for c in SERVER_COMPONENTS]
    new_key = build(dataclasses.replace(POSTGRES, registrar_url_key="url"), BEHIND_LOAD_BALANCER, on_kind=False)
    assert annotation(new_key, "registrar") != annotation(postgres, "registrar")
    assert annotation(new_key, "verifier") == annotation(postgres, "verifier")
    new_url = build(
        dataclasses.replace(POSTGRES, verifier_url=database_url("verifier-2")), BEHIND_LOAD_BALANCER, on_kind=False
    )
    assert annotation(new_url, "verifier") != annotation(postgres, "verifier")
    assert annotation(new_url, "registrar") == annotation(postgres, "registrar")


def test_on_kind_the_services_are_node_ports_on_the_given_ports_and_nothing_pins_agents(sqlite):
    found = services(sqlite)
    assert {name: spec["type"] for name, spec in found.items()} == {
        "keylime-registrar": "NodePort",
        "keylime-verifier": "NodePort",
    }
    assert {(p["name"], p["port"], p["nodePort"]) for p in found["keylime-registrar"]["ports"]} == {
        ("http", 8890, 31100),
        ("https", 8891, 31101),
    }
    assert [(p["port"], p["nodePort"]) for p in found["keylime-verifier"]["ports"]] == [(8881, 31200)]
    for spec in found.values():
        assert "externalTrafficPolicy" not in spec and "sessionAffinity" not in spec


def test_behind_a_load_balancer_each_agent_keeps_its_address_and_its_verifier_pod(postgres):
    found = services(postgres)
    for name, spec in found.items():
        assert spec["type"] == "LoadBalancer"
        assert spec["externalTrafficPolicy"] == "Local", name
        assert all("nodePort" not in port for port in spec["ports"])
    assert found["keylime-verifier"]["sessionAffinity"] == "ClientIP"
    assert found["keylime-verifier"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": AFFINITY_TIMEOUT_SECONDS}}
    assert "sessionAffinity" not in found["keylime-registrar"]


def test_a_node_port_exposure_needs_its_ports():
    with pytest.raises(ValueError, match="node_ports"):
        Exposure("NodePort")


def test_replicas_are_at_least_one():
    with pytest.raises(ValueError, match="at least 1"):
        dataclasses.replace(POSTGRES, verifier_replicas=0)


@pytest.mark.parametrize("variant", ["sqlite", "postgres"])
def test_every_server_has_tcp_probes_requests_and_limits_and_the_tenant_idles(request, variant):
    run = request.getfixturevalue(variant)
    for component, port in (("registrar", 8891), ("verifier", 8881)):
        (container,) = pod_spec(deployment(run, component))["containers"]
        # TCP: in push mode `/version` answers 410.
        assert container["readinessProbe"]["tcpSocket"] == {"port": port}
        assert container["livenessProbe"]["tcpSocket"] == {"port": port}
    tenant = deployment(run, "tenant")
    (idle,) = pod_spec(tenant)["containers"]
    assert idle["command"] == ["sleep", "infinity"]
    waived = {value.split("=")[0] for key, value in tenant.plain["metadata"]["annotations"].items() if "checkov" in key}
    assert {"CKV_K8S_8", "CKV_K8S_9"} <= waived
    for component in SERVER_COMPONENTS:
        (container,) = pod_spec(deployment(run, component))["containers"]
        assert set(container["resources"]) == {"requests", "limits"}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
        assert container["image"] == f"registry.example/{component}:1"
        assert container["securityContext"]["runAsUser"] == 1234


def test_on_kind_every_object_is_deleted_with_the_cluster(sqlite):
    cluster = sqlite.named("cluster").urn
    assert objects(sqlite) and all(r.deleted_with == cluster for r in objects(sqlite))


def test_on_an_existing_cluster_every_object_is_deleted_for_real(postgres):
    assert objects(postgres) and all(r.deleted_with == "" for r in objects(postgres))


@pytest.mark.parametrize("variant", ["sqlite", "postgres"])
def test_everything_waits_for_the_namespace_and_only_pods_and_services_for_what_is_ready(request, variant):
    run = request.getfixturevalue(variant)
    ready, namespace = run.named("ready").urn, run.named("servers-namespace").urn
    for resource in objects(run):
        waits = resource.type.endswith((":Deployment", ":Service"))
        assert (ready in resource.dependencies) == waits, resource.name
        assert namespace in resource.dependencies, resource.name


def test_the_config_and_tls_secrets_are_the_ones_passed_in(postgres):
    (config,) = kube_objects(postgres, "ConfigMap", "servers")
    assert config.plain["data"] == {f"{c}.conf": f"[{c}]\nalone = yes\n" for c in SERVER_COMPONENTS}
    secret = named(postgres, "Secret", "keylime-tenant-tls")
    assert secret.plain["stringData"] == {
        keylime_conf.CA_CERT: "CA",
        keylime_conf.CLIENT_CERT: "CERT tenant",
        keylime_conf.CLIENT_KEY: "KEY tenant",
    }
