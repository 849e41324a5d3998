"""KeylimeDatabase: the PostgreSQL the registrar and the verifier share, as one Secret `keylime-database`.

Either the user's own database (`external_url`, the `databaseUrl` config) or one PostgreSQL this program
runs in the namespace. Registrar and verifier may use the same database: each keeps its own tables and its
own migration table (README.md, "Several servers on PostgreSQL"), so both keys of the Secret hold one URL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.endpoints import KEYLIME_NAMESPACE
from components.pod_security import checkov_waivers, container_security_context, empty_dir, pod_security_context, resources
from components.settings import DATABASE_URL_PREFIX

PASSWORD_SCRIPT = "components/scripts/generate-password.sh"
SECRET_NAME = "keylime-database"
REGISTRAR_URL_KEY = "registrar-database-url"
VERIFIER_URL_KEY = "verifier-database-url"
PASSWORD_KEY = "postgres-password"

SERVICE_NAME = "keylime-postgres"
PORT = 5432
DATABASE = "keylime"
USER = "keylime"
# The official image (Debian bookworm, PostgreSQL 17), the index digest docker-library/repo-info records for the
# tag (repos/postgres/remote/17.11-bookworm.md). 17, not 18: 18 moved PGDATA and the VOLUME to /var/lib/postgresql.
IMAGE = "docker.io/library/postgres:17.11-bookworm@sha256:639ab7ceb90e13123085b741fb31ef493fba25463002f6da665352e7b534b652"
# The `postgres` user and group of the official Debian image (its Dockerfile: groupadd/useradd --gid/--uid 999).
# initdb wants its UID in /etc/passwd; another UID would make the entrypoint fake one through nss_wrapper.
POSTGRES_UID = 999
POSTGRES_GID = 999
DATA_MOUNT = "/var/lib/postgresql/data"
# initdb refuses a non-empty directory, and a volume's root may hold lost+found: the cluster lives one level down.
PGDATA = f"{DATA_MOUNT}/pgdata"
PASSWORD_MOUNT = "/etc/postgres-secret"
SERVER_LABELS = {"app.kubernetes.io/name": SERVICE_NAME, "app.kubernetes.io/part-of": "keylime-push"}
CLIENTS = ("keylime-registrar", "keylime-verifier")


def database_url(user: str, password: str, host: str, port: int, database: str) -> str:
    """The SQLAlchemy URL keylime's `database_url` takes, in the form `databaseUrl` must have (naming psycopg2, the
    driver of the upstream server images). `password` must be URL-safe as it is."""
    return f"{DATABASE_URL_PREFIX}{user}:{password}@{host}:{port}/{database}"


def in_cluster_url(password: str) -> str:
    return database_url(USER, password, f"{SERVICE_NAME}.{KEYLIME_NAMESPACE}.svc.cluster.local", PORT, DATABASE)


@dataclasses.dataclass
class KeylimeDatabaseArgs:
    provider: k8s.Provider
    """The cluster the servers run on."""
    namespace: pulumi.Resource
    """The `keylime` Namespace: every object here waits for it."""
    storage_class: str | None
    """The in-cluster database's volume class; None or "" means the cluster's default class."""
    storage_size: str
    external_url: pulumi.Input[str] | None = None
    """The user's database (a Pulumi secret); None runs PostgreSQL in the namespace."""


class KeylimeDatabase(pulumi.ComponentResource):
    secret_name: str
    registrar_url_key: str
    verifier_url_key: str
    ready: list[pulumi.Resource]
    """What the servers must wait for before they start."""
    url: pulumi.Output[str]
    """What both keys of the Secret hold (a secret): the servers digest it, so that a new URL rolls them."""

    def __init__(self, name: str, args: KeylimeDatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:database:KeylimeDatabase", name, None, opts)
        self.secret_name, self.registrar_url_key, self.verifier_url_key = SECRET_NAME, REGISTRAR_URL_KEY, VERIFIER_URL_KEY
        in_namespace = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.namespace])
        if args.external_url is not None:
            self.url = pulumi.Output.secret(args.external_url)
            self.ready = [_secret(name, {REGISTRAR_URL_KEY: self.url, VERIFIER_URL_KEY: self.url}, in_namespace)]
        else:
            self.ready, self.url = _in_cluster(name, args, in_namespace)
        self.register_outputs(
            {"secret_name": SECRET_NAME, "registrar_url_key": REGISTRAR_URL_KEY, "verifier_url_key": VERIFIER_URL_KEY}
        )


def _secret(name: str, data: dict[str, pulumi.Input[str]], opts: pulumi.ResourceOptions) -> k8s.core.v1.Secret:
    return k8s.core.v1.Secret(
        f"{name}-secret",
        # Not the server's labels: with an external database there is no server here.
        metadata={"name": SECRET_NAME, "namespace": KEYLIME_NAMESPACE,
                  "labels": {"app.kubernetes.io/name": SECRET_NAME, "app.kubernetes.io/part-of": "keylime-push"}},
        type="Opaque",
        string_data=pulumi.Output.secret(data),
        opts=opts,
    )


def _in_cluster(
    name: str, args: KeylimeDatabaseArgs, opts: pulumi.ResourceOptions
) -> tuple[list[pulumi.Resource], pulumi.Output[str]]:
    password = command.local.Command(
        f"{name}-password",
        create=PASSWORD_SCRIPT,
        # The database keeps the password it was initialised with (the image sets it on an empty volume only), so
        # it is made once: no `update`, no triggers, and a later edit of `create` or `logging` does not rerun it.
        logging=command.local.Logging.STDERR,
        opts=pulumi.ResourceOptions(
            parent=opts.parent, additional_secret_outputs=["stdout"], ignore_changes=["create", "logging"]
        ),
    )
    generated: pulumi.Output[str] = pulumi.Output.secret(password.stdout)
    url = generated.apply(in_cluster_url)
    secret = _secret(name, {PASSWORD_KEY: generated, REGISTRAR_URL_KEY: url, VERIFIER_URL_KEY: url}, opts)
    service = k8s.core.v1.Service(
        f"{name}-service",
        metadata={"name": SERVICE_NAME, "namespace": KEYLIME_NAMESPACE, "labels": SERVER_LABELS},
        spec={
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": SERVICE_NAME},
            "ports": [{"name": "postgres", "port": PORT, "targetPort": "postgres", "protocol": "TCP"}],
        },
        opts=opts,
    )
    k8s.networking.v1.NetworkPolicy(
        f"{name}-ingress",
        metadata={"name": f"{SERVICE_NAME}-ingress", "namespace": KEYLIME_NAMESPACE},
        spec={
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": SERVICE_NAME}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": client}}} for client in CLIENTS],
                    "ports": [{"protocol": "TCP", "port": PORT}],
                }
            ],
        },
        opts=opts,
    )
    statefulset = k8s.apps.v1.StatefulSet(
        f"{name}-postgres",
        metadata={
            "name": SERVICE_NAME,
            "namespace": KEYLIME_NAMESPACE,
            "labels": SERVER_LABELS,
            "annotations": checkov_waivers(
                CKV_K8S_40=f"{POSTGRES_UID}:{POSTGRES_GID} is the postgres user of the official image, which initdb "
                "expects in /etc/passwd",
                CKV_K8S_15="the image is pinned by digest: IfNotPresent pulls exactly what Always would",
            ),
        },
        spec=_statefulset_spec(args),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[secret, service])),
    )
    return [secret, service, statefulset], url


def _statefulset_spec(args: KeylimeDatabaseArgs) -> dict[str, Any]:
    probe_command = ["pg_isready", "--host=127.0.0.1", f"--port={PORT}", f"--username={USER}", f"--dbname={DATABASE}"]
    probe = {"exec": {"command": probe_command}, "periodSeconds": 10, "timeoutSeconds": 5}
    claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": args.storage_size}}}
    if args.storage_class:
        # Left out, not "": an empty storageClassName asks for no class at all, not for the default one.
        claim["storageClassName"] = args.storage_class
    return {
        # One server, not a replicated one: a highly available PostgreSQL (replication, failover, backups) is
        # what `databaseUrl` is for, the user's own database; this one serves a lab or a small fleet.
        "replicas": 1,
        # A ClusterIP Service, not a headless one: clients dial its stable address, never a pod's own DNS name.
        "serviceName": SERVICE_NAME,
        "selector": {"matchLabels": {"app.kubernetes.io/name": SERVICE_NAME}},
        # The volume goes with the StatefulSet: a later `up` generates a new password, which a kept volume's
        # cluster (initialised with the old one) would refuse.
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim}],
        "template": {
            "metadata": {"labels": SERVER_LABELS},
            "spec": {
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                "securityContext": {**pod_security_context(POSTGRES_UID, POSTGRES_GID), "fsGroupChangePolicy": "OnRootMismatch"},
                # The image stops on SIGINT (fast shutdown); give it time to write its last checkpoint.
                "terminationGracePeriodSeconds": 60,
                "containers": [
                    {
                        "name": "postgres",
                        "image": IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "env": [
                            {"name": "PGDATA", "value": PGDATA},
                            {"name": "POSTGRES_USER", "value": USER},
                            {"name": "POSTGRES_DB", "value": DATABASE},
                            # A file, not a variable: the entrypoint reads *_FILE, and the password stays out of `env`.
                            {"name": "POSTGRES_PASSWORD_FILE", "value": f"{PASSWORD_MOUNT}/{PASSWORD_KEY}"},
                        ],
                        "ports": [{"name": "postgres", "containerPort": PORT, "protocol": "TCP"}],
                        # Read-only but for the volumes: initdb and the server write PGDATA, the socket and its
                        # lock go to /var/run/postgresql, shared memory segments to /dev/shm.
                        "securityContext": container_security_context(POSTGRES_UID, POSTGRES_GID),
                        "resources": resources("100m", "256Mi", "1", "1Gi"),
                        # initdb on a fresh volume comes first; liveness only counts once the server has answered.
                        "startupProbe": {**probe, "failureThreshold": 30},
                        "readinessProbe": probe,
                        "livenessProbe": {**probe, "failureThreshold": 6},
                        "volumeMounts": [
                            {"name": "data", "mountPath": DATA_MOUNT},
                            {"name": "password", "mountPath": PASSWORD_MOUNT, "readOnly": True},
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "shm", "mountPath": "/dev/shm"},
                        ],
                    }
                ],
                "volumes": [
                    {
                        "name": "password",
                        "secret": {"secretName": SECRET_NAME, "items": [{"key": PASSWORD_KEY, "path": PASSWORD_KEY}],
                                   "defaultMode": 0o440},
                    },
                    empty_dir("run", "16Mi"),
                    empty_dir("tmp"),
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
                ],
            },
        },
    }
