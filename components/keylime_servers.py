"""KeylimeServers: the registrar, the push-mode verifier and the tenant in the `keylime` namespace of any cluster.

Provider-agnostic: the cluster comes from the provider in the component's ResourceOptions (a Kind cluster's,
or one made from a user's kubeconfig), so the same servers run on Kind and on an existing cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import keylime_conf
from components.endpoints import KEYLIME_NAMESPACE, REGISTRAR_PORT, REGISTRAR_TLS_PORT, SERVICE_NAMES, VERIFIER_PORT
from components.images import SERVER_COMPONENTS
from components.pki import IssuedCertificate
from components.pod_security import (
    allow_ingress,
    checkov_waivers,
    container_security_context,
    deny_all_ingress,
    empty_dir,
    pod_security_context,
    resources,
)
from components.rollout import inputs_annotation
from components.settings import ServiceType

CONFIG_MAP = "keylime-config"
DATA_CAPACITY = "1Gi"
# kube-proxy's own default, written out: longer than any pause between an agent's attestations (its cadence, or
# the verifier's rate-limit blocks of up to an hour), so an agent leaves its verifier pod only when the pod goes.
AFFINITY_TIMEOUT_SECONDS = 10800


@dataclasses.dataclass(frozen=True)
class NodePorts:
    registrar: int
    registrar_tls: int
    verifier: int


@dataclasses.dataclass(frozen=True)
class Exposure:
    """How agents outside the cluster reach the registrar and the verifier."""

    service_type: ServiceType
    node_ports: NodePorts | None = None
    """The ports agents dial on a node: required for NodePort; for LoadBalancer the cluster picks them if None."""
    pin_agents: bool = False
    """Keep each agent on one verifier pod (replicated verifiers). keylime 7.14.3 keeps a push agent's
    proof-of-possession session in one verifier process's memory until it completes (session_controller.py)
    and times agents out with a timer per process (push_agent_monitor.py): an agent whose attestations land
    on two pods is marked TIMEOUT by the one it left. So the verifier Service has ClientIP affinity, and the
    agent-facing Services `externalTrafficPolicy: Local`: without it kube-proxy SNATs to the node that took
    the connection and the affinity follows that node, not the agent (README, "Several servers on
    PostgreSQL"); Local also lets the verifier's per-IP session limits count agents, not nodes. With Local a
    node answers only for the pods it runs: behind a LoadBalancer its health check steers traffic to those
    nodes; with NodePort agents must dial a node that runs a pod."""

    def __post_init__(self) -> None:
        if self.service_type == "NodePort" and self.node_ports is None:
            raise ValueError("a NodePort exposure needs node_ports: agents are configured with them")


@dataclasses.dataclass(frozen=True)
class SqliteDatabase:
    """Each server's sqlite file on a PersistentVolumeClaim of the cluster's default class: one writer per file,
    so one pod per server, and a rollout stops the old pod before the new one opens the file."""


@dataclasses.dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL database the servers share, its URLs in a Secret declared elsewhere: replicated servers."""

    secret_name: str
    registrar_url_key: str
    verifier_url_key: str
    registrar_url: pulumi.Input[str]
    verifier_url: pulumi.Input[str]
    """The URLs the Secret holds under those keys: only digested into the pod templates, so that a new URL
    (a new password, a new host) rolls the pods; the Secret itself is not declared here."""
    registrar_replicas: int
    verifier_replicas: int

    def __post_init__(self) -> None:
        if self.registrar_replicas < 1 or self.verifier_replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.registrar_replicas}, {self.verifier_replicas}")

    def url(self, server: str) -> tuple[str, pulumi.Input[str]]:
        """The Secret key `server` reads its database URL from, and the URL under it."""
        if server == "registrar":
            return self.registrar_url_key, self.registrar_url
        return self.verifier_url_key, self.verifier_url

    def replicas(self, server: str) -> int:
        return self.registrar_replicas if server == "registrar" else self.verifier_replicas


Database = SqliteDatabase | PostgresDatabase


@dataclasses.dataclass(frozen=True)
class ServerCertificates:
    """The CA every server trusts, and each server's identity: each lands in that server's TLS Secret only."""

    ca_cert_pem: pulumi.Input[str]
    registrar: IssuedCertificate
    verifier: IssuedCertificate
    verifier_client: IssuedCertificate
    """The verifier's mTLS identity towards the registrar."""
    tenant: IssuedCertificate


@dataclasses.dataclass
class KeylimeServersArgs:
    images: Mapping[str, str]
    """The registrar's, verifier's and tenant's image references."""
    configs: Mapping[str, str]
    """Each server's rendered keylime configuration: registrar.conf, verifier.conf, tenant.conf."""
    certificates: ServerCertificates
    uid: int
    gid: int
    """The user and group the servers run as."""
    namespace: k8s.core.v1.Namespace
    """The `keylime` Namespace (`keylime_namespace`), declared by the caller: the database goes in it before the
    servers, which wait for the database."""
    exposure: Exposure
    database: Database
    deleted_with: pulumi.Resource | None
    """What deletes every object with it (a Kind cluster), so destroy skips deleting them one by one. None on a
    cluster that outlives the stack: then every object is deleted for real."""
    ready: Sequence[pulumi.Resource] = ()
    """What the server pods need before they start: images loaded into the nodes, the database running."""


@dataclasses.dataclass(frozen=True)
class _ServerShape:
    """What differs between the three servers' pods."""

    component: str
    ports: dict[str, int]
    probe_port: int | None
    env: dict[str, str]
    size: dict[str, Any]


REGISTRAR = _ServerShape(
    "registrar",
    ports={"http": REGISTRAR_PORT, "https": REGISTRAR_TLS_PORT},
    probe_port=REGISTRAR_TLS_PORT,
    env={},
    size=resources("100m", "128Mi", "500m", "512Mi"),
)
VERIFIER = _ServerShape(
    "verifier",
    ports={"https": VERIFIER_PORT},
    probe_port=VERIFIER_PORT,
    # 7.13-7.14.0 templates put `mode` in the wrong section; the variable is read before any file.
    env={"KEYLIME_VERIFIER_MODE": "push"},
    size=resources("200m", "256Mi", "1", "1Gi"),
)
TENANT = _ServerShape("tenant", ports={}, probe_port=None, env={}, size=resources("50m", "128Mi", "500m", "512Mi"))


def keylime_namespace(name: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.Namespace:
    """The `keylime` Namespace the servers (and the database, and the controller) run in."""
    return k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": KEYLIME_NAMESPACE}, opts=opts)


class KeylimeServers(pulumi.ComponentResource):
    tenant: k8s.apps.v1.Deployment
    registrar_service: k8s.core.v1.Service
    verifier_service: k8s.core.v1.Service
    workloads: list[pulumi.Resource]
    """What is up once the servers serve: enrollment waits for these."""

    def __init__(self, name: str, args: KeylimeServersArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:servers:KeylimeServers", name, None, opts)
        in_namespace = pulumi.ResourceOptions(
            parent=self,
            deleted_with=args.deleted_with,
            depends_on=[args.namespace],
            # Stacks deployed before this component existed had these objects directly under the component that
            # now holds it (InfraCluster): the alias keeps them, where new URNs would create each object again,
            # which the cluster refuses (AlreadyExists), then delete the old one.
            aliases=[pulumi.Alias(parent=opts.parent)] if opts is not None and opts.parent is not None else [],
        )

        config_files = {f"{component}.conf": args.configs[component] for component in SERVER_COMPONENTS}
        k8s.core.v1.ConfigMap(f"{name}-config", metadata=_metadata(CONFIG_MAP, "config"), data=config_files, opts=in_namespace)
        certificates = args.certificates
        registrar_files = {keylime_conf.SERVER_CERT: certificates.registrar.cert_pem,
                           keylime_conf.SERVER_KEY: certificates.registrar.private_key_pem}
        verifier_files = {keylime_conf.SERVER_CERT: certificates.verifier.cert_pem,
                          keylime_conf.SERVER_KEY: certificates.verifier.private_key_pem,
                          keylime_conf.CLIENT_CERT: certificates.verifier_client.cert_pem,
                          keylime_conf.CLIENT_KEY: certificates.verifier_client.private_key_pem}
        tenant_files = {keylime_conf.CLIENT_CERT: certificates.tenant.cert_pem,
                        keylime_conf.CLIENT_KEY: certificates.tenant.private_key_pem}
        secrets: dict[str, dict[str, pulumi.Input[str]]] = {}
        for component, files in (("registrar", registrar_files), ("verifier", verifier_files), ("tenant", tenant_files)):
            secrets[component] = {keylime_conf.CA_CERT: certificates.ca_cert_pem, **files}
            k8s.core.v1.Secret(
                f"{name}-{component}-tls",
                metadata=_metadata(_tls_secret(component), component),
                type="Opaque",
                string_data=secrets[component],
                opts=in_namespace,
            )

        servers = _Servers(name, args, config_files, secrets, in_namespace)
        registrar, verifier, self.tenant = (servers.deployment(shape) for shape in (REGISTRAR, VERIFIER, TENANT))
        for shape in (REGISTRAR, VERIFIER):
            if servers.replicas(shape.component) > 1:
                servers.disruption_budget(shape.component)
        self.registrar_service = servers.service(REGISTRAR)
        self.verifier_service = servers.service(VERIFIER)
        for policy_name, spec in (
            ("default-deny-ingress", deny_all_ingress()),
            ("registrar-ingress", allow_ingress(_labels("registrar"), [REGISTRAR_PORT, REGISTRAR_TLS_PORT])),
            ("verifier-ingress", allow_ingress(_labels("verifier"), [VERIFIER_PORT])),
        ):
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy_name}",
                metadata={"name": f"keylime-{policy_name}", "namespace": KEYLIME_NAMESPACE},
                spec=spec,
                opts=in_namespace,
            )
        self.workloads = [registrar, verifier, self.tenant, self.registrar_service, self.verifier_service]
        self.register_outputs({})


def _tls_secret(component: str) -> str:
    return f"keylime-{component}-tls"


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"keylime-{component}"}


def _metadata(name: str, component: str, annotations: Mapping[str, pulumi.Input[str]] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": KEYLIME_NAMESPACE,
        "labels": {**_labels(component), "app.kubernetes.io/part-of": "keylime-push"},
    }
    if annotations:
        metadata["annotations"] = annotations
    return metadata


@dataclasses.dataclass(frozen=True)
class _Servers:
    """What every server object in the namespace shares: the Args, the config and TLS data, resource options."""

    name: str
    args: KeylimeServersArgs
    config_files: dict[str, str]
    """The ConfigMap's data: each server mounts its own file."""
    secrets: dict[str, dict[str, pulumi.Input[str]]]
    """Each server's TLS Secret data."""
    opts: pulumi.ResourceOptions

    def replicas(self, component: str) -> int:
        database = self.args.database
        if component == "tenant" or isinstance(database, SqliteDatabase):
            return 1
        return database.replicas(component)

    def deployment(self, shape: _ServerShape) -> k8s.apps.v1.Deployment:
        component, database, uid, gid = shape.component, self.args.database, self.args.uid, self.args.gid
        config_file, secret = f"{component}.conf", _tls_secret(component)
        # Exactly what this pod reads: its own file of the ConfigMap, its own Secret, and its database URL.
        reads: dict[str, Any] = {CONFIG_MAP: {config_file: self.config_files[config_file]}, secret: self.secrets[component]}
        env: list[dict[str, Any]] = [
            {"name": f"KEYLIME_{component.upper()}_CONFIG", "value": f"{keylime_conf.CONF_DIR}/{component}.conf"},
            {"name": "KEYLIME_DIR", "value": keylime_conf.DATA_DIR},
            *({"name": key, "value": value} for key, value in shape.env.items()),
        ]
        data_volume = empty_dir("data")
        specific: dict[str, str] = {}
        if component in ("registrar", "verifier"):
            if isinstance(database, PostgresDatabase):
                url_key, url = database.url(component)
                reads[database.secret_name] = {url_key: url}
                # keylime reads `database_url` from KEYLIME_<SERVER>_DATABASE_URL before its file: the password
                # stays in the Secret, out of the ConfigMap.
                specific["CKV_K8S_35"] = (
                    "keylime takes database_url from its config files or from KEYLIME_<SERVER>_DATABASE_URL; the "
                    "Secret holds the bare URL, and the variable keeps its password out of the ConfigMap"
                )
                env.append(
                    {
                        "name": f"KEYLIME_{component.upper()}_DATABASE_URL",
                        "valueFrom": {"secretKeyRef": {"name": database.secret_name, "key": url_key}},
                    }
                )
            else:
                data_volume = {"name": "data", "persistentVolumeClaim": {"claimName": self.sqlite_claim(component)}}
        replicas = self.replicas(component)
        container: dict[str, Any] = {
            "name": component,
            "image": self.args.images[component],
            "imagePullPolicy": "IfNotPresent",
            "env": env,
            "ports": [{"name": port_name, "containerPort": port} for port_name, port in shape.ports.items()],
            "securityContext": container_security_context(uid, gid),
            "resources": shape.size,
            "volumeMounts": [
                {"name": "config", "mountPath": keylime_conf.CONF_DIR, "readOnly": True},
                {"name": "tls", "mountPath": keylime_conf.TLS_DIR, "readOnly": True},
                {"name": "data", "mountPath": keylime_conf.DATA_DIR},
                {"name": "run", "mountPath": "/run/keylime"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        if shape.probe_port is not None:
            # TCP: in push mode `/version` answers 410.
            probe = {"tcpSocket": {"port": shape.probe_port}, "periodSeconds": 10}
            container["readinessProbe"] = {**probe, "initialDelaySeconds": 3}
            container["livenessProbe"] = {**probe, "initialDelaySeconds": 15}
        else:
            container["command"] = ["sleep", "infinity"]
            idle = "the tenant is an idle container for kubectl exec keylime_tenant and serves nothing to probe"
            specific.update(CKV_K8S_8=idle, CKV_K8S_9=idle)
        pod_spec: dict[str, Any] = {
            # Service links would inject KEYLIME_VERIFIER_PORT=tcp://..., which keylime reads as config.
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(uid, gid),
            "containers": [container],
            "volumes": [
                {
                    "name": "config",
                    "configMap": {"name": CONFIG_MAP, "items": [{"key": config_file, "path": config_file}]},
                },
                {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o440}},
                data_volume,
                empty_dir("run", "16Mi"),
                empty_dir("tmp"),
            ],
        }
        if replicas > 1:
            # One node lost takes as few replicas with it as the nodes allow; never a reason to leave a pod pending.
            pod_spec["topologySpreadConstraints"] = [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": _labels(component)},
                }
            ]
        return k8s.apps.v1.Deployment(
            f"{self.name}-{component}",
            metadata=_metadata(
                f"keylime-{component}", component, checkov_waivers("CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_15", **specific)
            ),
            spec={
                "replicas": replicas,
                "strategy": self.strategy(component),
                "selector": {"matchLabels": _labels(component)},
                "template": {
                    "metadata": {"labels": _labels(component), "annotations": inputs_annotation(reads)},
                    "spec": pod_spec,
                },
            },
            opts=self.after_ready,
        )

    @property
    def after_ready(self) -> pulumi.ResourceOptions:
        """Options of the objects that wait for `ready`: the Deployments, and the Services, whose await for
        endpoints would otherwise spend its time on image loads and database starts."""
        return pulumi.ResourceOptions.merge(self.opts, pulumi.ResourceOptions(depends_on=list(self.args.ready)))

    def strategy(self, component: str) -> dict[str, Any]:
        if component == "tenant" or isinstance(self.args.database, SqliteDatabase):
            # sqlite: one writer, the old pod must stop before the new one opens the database. The tenant: one
            # pod for `kubectl exec`, which nothing serves from.
            return {"type": "Recreate"}
        # Every old pod serves until its successor is ready: agents leaving a replaced pod find a live one.
        return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}

    def sqlite_claim(self, component: str) -> str:
        """The claim holding `component`'s sqlite file: registrations and enrollments outlive its pods."""
        claim = f"keylime-{component}-data"
        k8s.core.v1.PersistentVolumeClaim(
            f"{self.name}-{component}-data",
            metadata=_metadata(
                claim,
                component,
                # A WaitForFirstConsumer class (Kind's local-path, most clouds') binds on first use; waiting for
                # Bound before the pod exists would never end.
                {"pulumi.com/skipAwait": "true"},
            ),
            spec={"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": DATA_CAPACITY}}},
            opts=self.opts,
        )
        return claim

    def disruption_budget(self, component: str) -> None:
        # maxUnavailable 1 rather than minAvailable 1: a drain evicts one replica at a time whatever the count,
        # so only one pod's agents move at once and the others carry them; minAvailable 1 would let a drain
        # take all but one of N verifiers together and pile every agent on the last.
        k8s.policy.v1.PodDisruptionBudget(
            f"{self.name}-{component}-disruption-budget",
            metadata=_metadata(f"keylime-{component}", component),
            spec={
                "maxUnavailable": 1,
                "selector": {"matchLabels": _labels(component)},
                # A pod that is not ready serves nothing: evicting it must not wait for the budget.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
            opts=self.opts,
        )

    def node_port(self, port: int) -> dict[str, int]:
        """The nodePort field for the server port `port`: absent when the cluster picks it."""
        node_ports = self.args.exposure.node_ports
        if node_ports is None:
            return {}
        by_port = {REGISTRAR_PORT: node_ports.registrar, REGISTRAR_TLS_PORT: node_ports.registrar_tls,
                   VERIFIER_PORT: node_ports.verifier}
        return {"nodePort": by_port[port]}

    def service(self, shape: _ServerShape) -> k8s.core.v1.Service:
        component, exposure = shape.component, self.args.exposure
        spec: dict[str, Any] = {
            "type": exposure.service_type,
            "selector": _labels(component),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port, **self.node_port(port)}
                for port_name, port in shape.ports.items()
            ],
        }
        if exposure.pin_agents:
            # Why: see Exposure.pin_agents.
            spec["externalTrafficPolicy"] = "Local"
            if component == "verifier":
                spec["sessionAffinity"] = "ClientIP"
                spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": AFFINITY_TIMEOUT_SECONDS}}
        return k8s.core.v1.Service(
            f"{self.name}-{component}-service",
            metadata=_metadata(SERVICE_NAMES[component], component),  # type: ignore[index]
            spec=spec,
            opts=self.after_ready,
        )
