"""KeylimeDatabase alone, from its Args: the Secret the servers read, and the in-cluster PostgreSQL behind it."""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
from helpers import ROOT, checkov, database_alone, kube_objects, pod_spec, validate_strictly, write_manifests

from components import postgres
from tools.offline import ProgramRun, is_secret, redact

# What the mocked generate-password.sh prints: the shape of the real one's output.
PASSWORD = "Zq3-aYl_0fV9kT2mW8sR1xC4nB7dE6gH5jK0pL9oI8u"
EXTERNAL_URL = "postgresql+psycopg2://attest:s3cr3t-external@db.example.org:6543/attestation"


@pytest.fixture(scope="module")
def in_cluster_alone() -> tuple[ProgramRun, list[str]]:
    return database_alone(PASSWORD)


@pytest.fixture(scope="module")
def external_alone() -> tuple[ProgramRun, list[str]]:
    return database_alone(PASSWORD, external_url=EXTERNAL_URL)


@pytest.fixture(scope="module")
def in_cluster(in_cluster_alone) -> ProgramRun:
    return in_cluster_alone[0]


@pytest.fixture(scope="module")
def external(external_alone) -> ProgramRun:
    return external_alone[0]


def only(run: ProgramRun, kind: str):
    (found,) = kube_objects(run, kind)
    return found


def container(run: ProgramRun) -> dict:
    (found,) = pod_spec(only(run, "StatefulSet"))["containers"]
    return found


def test_the_generated_password_is_only_in_the_secret_and_secret_there(in_cluster):
    secret = only(in_cluster, "Secret")
    assert is_secret(secret.inputs["stringData"])
    assert secret.plain["stringData"][postgres.PASSWORD_KEY] == PASSWORD
    for resource in in_cluster.resources:
        assert PASSWORD not in json.dumps(redact(resource.inputs)), resource.name
    assert in_cluster.outputs == {}


def test_the_password_is_generated_once_and_never_shown(in_cluster):
    password = in_cluster.named("db-password")
    assert password.type == "command:local:Command"
    assert password.additional_secret_outputs == ["stdout"]
    # Nothing that would run it again: no update command, no triggers, and edits of its command are ignored.
    assert "update" not in password.plain and "triggers" not in password.plain
    assert {"create", "logging"} <= set(password.ignore_changes)
    assert password.plain["logging"] == "stderr"
    script = ROOT / password.plain["create"]
    assert os.access(script, os.X_OK) and "set -euo pipefail" in script.read_text()


def test_both_servers_get_one_url_to_the_declared_service(in_cluster):
    data = only(in_cluster, "Secret").plain["stringData"]
    assert data[postgres.REGISTRAR_URL_KEY] == data[postgres.VERIFIER_URL_KEY]
    url = urlsplit(data[postgres.REGISTRAR_URL_KEY])
    service = only(in_cluster, "Service").plain
    assert url.scheme == "postgresql+psycopg2"
    assert (url.username, url.password) == ("keylime", PASSWORD)
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert [url.port] == [port["port"] for port in service["spec"]["ports"]]
    env = {item["name"]: item.get("value") for item in container(in_cluster)["env"]}
    assert url.path == f"/{env['POSTGRES_DB']}" and url.username == env["POSTGRES_USER"]


def test_the_server_reads_its_password_from_the_secret_as_a_file(in_cluster):
    spec = pod_spec(only(in_cluster, "StatefulSet"))
    server = container(in_cluster)
    env = {item["name"]: item for item in server["env"]}
    assert "POSTGRES_PASSWORD" not in env
    password_file = PurePosixPath(env["POSTGRES_PASSWORD_FILE"]["value"])
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == str(password_file.parent))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == only(in_cluster, "Secret").plain["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": postgres.PASSWORD_KEY, "path": password_file.name}]


def test_postgres_runs_as_the_image_user_not_root_with_a_read_only_root(in_cluster):
    spec = pod_spec(only(in_cluster, "StatefulSet"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (999, 999)
    assert spec["securityContext"]["fsGroup"] == 999
    assert spec["automountServiceAccountToken"] is False
    context = container(in_cluster)["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 999
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True
    # Where the image's entrypoint and server write, a volume is mounted.
    mounts = {m["mountPath"] for m in container(in_cluster)["volumeMounts"] if not m.get("readOnly")}
    assert {"/var/run/postgresql", "/tmp", "/dev/shm"} <= mounts
    assert set(container(in_cluster)["resources"]) == {"requests", "limits"}


def test_the_data_is_on_a_claim_in_a_subdirectory_and_goes_with_the_statefulset(in_cluster):
    spec = only(in_cluster, "StatefulSet").plain["spec"]
    assert spec["replicas"] == 1
    (template,) = spec["volumeClaimTemplates"]
    assert template["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "storageClassName" not in template["spec"]
    mount = next(m for m in container(in_cluster)["volumeMounts"] if m["name"] == template["metadata"]["name"])
    pgdata = next(e["value"] for e in container(in_cluster)["env"] if e["name"] == "PGDATA")
    assert PurePosixPath(pgdata).parent == PurePosixPath(mount["mountPath"])
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"


@pytest.mark.parametrize(("storage_class", "declared"), [("", None), ("fast-ssd", "fast-ssd")])
def test_the_claim_takes_the_given_class_and_size_or_the_cluster_default(storage_class, declared):
    run, _ = database_alone(PASSWORD, storage_class=storage_class, storage_size="20Gi")
    (template,) = only(run, "StatefulSet").plain["spec"]["volumeClaimTemplates"]
    assert template["spec"].get("storageClassName") == declared
    assert template["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_probes_ask_pg_isready_over_tcp(in_cluster):
    server = container(in_cluster)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = server[probe]["exec"]["command"]
        assert argv[0] == "pg_isready" and "--host=127.0.0.1" in argv and f"--port={postgres.PORT}" in argv, probe


def test_only_registrar_and_verifier_pods_reach_postgres(in_cluster):
    policy = only(in_cluster, "NetworkPolicy").plain["spec"]
    pod_labels = only(in_cluster, "StatefulSet").plain["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert only(in_cluster, "Service").plain["spec"]["selector"].items() <= pod_labels.items()
    (rule,) = policy["ingress"]
    assert sorted(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]) == [
        "keylime-registrar",
        "keylime-verifier",
    ]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"])
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]


def test_the_image_is_pinned_by_tag_and_digest(in_cluster):
    server = container(in_cluster)
    name, _, digest = server["image"].partition("@sha256:")
    assert name.startswith("docker.io/library/postgres:17.") and len(digest) == 64
    assert server["imagePullPolicy"] == "IfNotPresent"


def test_everything_waits_for_the_namespace_and_the_server_for_its_secret(in_cluster):
    namespace = in_cluster.named("namespace")
    objects = [r for r in in_cluster.resources if r.type.startswith("kubernetes:") and r.custom and r is not namespace]
    assert len(objects) == 4
    for resource in objects:
        assert namespace.urn in resource.dependencies, resource.name
    assert only(in_cluster, "Secret").urn in only(in_cluster, "StatefulSet").dependencies


def test_the_servers_wait_for_the_secret_and_the_running_server(in_cluster_alone, external_alone):
    run, ready = in_cluster_alone
    assert ready == sorted([only(run, "StatefulSet").name, only(run, "Service").name, only(run, "Secret").name])
    run, ready = external_alone
    assert ready == [only(run, "Secret").name]


def test_an_external_database_is_only_a_secret_holding_its_url(external):
    assert sorted(r.type for r in external.resources if r.custom and r.type.startswith(("kubernetes:", "command:"))) == [
        "kubernetes:core/v1:Namespace",
        "kubernetes:core/v1:Secret",
    ]
    secret = only(external, "Secret")
    assert is_secret(secret.inputs["stringData"])
    assert secret.plain["metadata"]["name"] == postgres.SECRET_NAME
    assert secret.plain["stringData"] == {postgres.REGISTRAR_URL_KEY: EXTERNAL_URL, postgres.VERIFIER_URL_KEY: EXTERNAL_URL}
    for resource in external.resources:
        assert "s3cr3t-external" not in json.dumps(redact(resource.inputs)), resource.name


def test_the_in_cluster_manifests_validate_and_pass_checkov(in_cluster, tmp_path):
    paths = write_manifests(in_cluster, tmp_path)
    assert len(paths) == 5
    result = validate_strictly(paths)
    assert result.returncode == 0, result.stdout + result.stderr
    failed, passed = checkov(tmp_path)
    assert failed == []
    assert passed > 40
