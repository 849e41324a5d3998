"""InfraCluster: the Kind cluster `keylime-<stack>-infra` with the registrar, the push-mode verifier and the tenant."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import keylime_conf
from components.endpoints import KEYLIME_NAMESPACE, REGISTRAR_PORT, REGISTRAR_TLS_PORT, SERVICE_NAMES, VERIFIER_PORT
from components.images import SERVER_COMPONENTS, BuiltImage
from components.kind_cluster import KindCluster, KindClusterArgs
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

CONFIG_MAP = "keylime-config"
DATA_CAPACITY = "1Gi"


@dataclasses.dataclass
class InfraClusterArgs:
    cluster_name: str
    owner: str
    """The stack that owns the Kind cluster (see KindClusterArgs)."""
    images: dict[str, BuiltImage]
    """The registrar, verifier and tenant images, and every other image the cluster runs: all are kind-loaded."""
    configs: dict[str, str]
    """Each server's rendered keylime configuration: registrar.conf, verifier.conf, tenant.conf."""
    ca_cert_pem: pulumi.Input[str]
    registrar_cert: IssuedCertificate
    verifier_cert: IssuedCertificate
    verifier_client_cert: IssuedCertificate
    """The verifier's mTLS identity towards the registrar."""
    tenant_cert: IssuedCertificate
    uid: int
    gid: int
    """The user and group the servers run as."""
    registrar_node_port: int
    registrar_tls_node_port: int
    verifier_node_port: int
    listen_address: str
    """The one host address the NodePorts are published on."""
    listen_address_from: Sequence[pulumi.Resource] = ()
    """What brings `listen_address` to the host (hwtpm: the libvirt network): Docker cannot bind before it."""


class InfraCluster(pulumi.ComponentResource):
    cluster_name: str
    kind: KindCluster
    namespace: k8s.core.v1.Namespace
    tenant: k8s.apps.v1.Deployment
    workloads: list[pulumi.Resource]

    def __init__(self, name: str, args: InfraClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:infra:InfraCluster", name, None, opts)
        self.cluster_name = args.cluster_name
        self.kind = KindCluster(
            name,
            KindClusterArgs(
                cluster_name=args.cluster_name,
                owner=args.owner,
                images=list(args.images.values()),
                # Published on the host too: for the operator (swtpm), for the VM on its libvirt network (hwtpm).
                host_ports=(args.registrar_node_port, args.registrar_tls_node_port, args.verifier_node_port),
                listen_address=args.listen_address,
                after=args.listen_address_from,
            ),
            pulumi.ResourceOptions(parent=self),
        )
        # Objects go when the cluster goes; deleting them one by one first would only slow destroy down.
        on_cluster = pulumi.ResourceOptions(
            parent=self, provider=self.kind.provider, deleted_with=self.kind.cluster, depends_on=[self.kind.images_loaded]
        )
        self.namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": KEYLIME_NAMESPACE}, opts=on_cluster)
        in_namespace = pulumi.ResourceOptions.merge(on_cluster, pulumi.ResourceOptions(depends_on=[self.namespace]))

        config_files = {f"{component}.conf": args.configs[component] for component in SERVER_COMPONENTS}
        k8s.core.v1.ConfigMap(f"{name}-config", metadata=_metadata(CONFIG_MAP, "config"), data=config_files, opts=in_namespace)
        registrar_files = {keylime_conf.SERVER_CERT: args.registrar_cert.cert_pem,
                           keylime_conf.SERVER_KEY: args.registrar_cert.private_key_pem}
        verifier_files = {keylime_conf.SERVER_CERT: args.verifier_cert.cert_pem,
                          keylime_conf.SERVER_KEY: args.verifier_cert.private_key_pem,
                          keylime_conf.CLIENT_CERT: args.verifier_client_cert.cert_pem,
                          keylime_conf.CLIENT_KEY: args.verifier_client_cert.private_key_pem}
        tenant_files = {keylime_conf.CLIENT_CERT: args.tenant_cert.cert_pem,
                        keylime_conf.CLIENT_KEY: args.tenant_cert.private_key_pem}
        secrets: dict[str, dict[str, pulumi.Input[str]]] = {}
        for component, files in (("registrar", registrar_files), ("verifier", verifier_files), ("tenant", tenant_files)):
            secrets[component] = {keylime_conf.CA_CERT: args.ca_cert_pem, **files}
            k8s.core.v1.Secret(
                f"{name}-{component}-tls",
                metadata=_metadata(_tls_secret(component), component),
                type="Opaque",
                string_data=secrets[component],
                opts=in_namespace,
            )

        servers = _Servers(name, args.images, args.uid, args.gid, config_files, secrets, in_namespace)
        registrar = servers.deployment(
            "registrar",
            ports={"http": REGISTRAR_PORT, "https": REGISTRAR_TLS_PORT},
            probe_port=REGISTRAR_TLS_PORT,
            env={},
            size=resources("100m", "128Mi", "500m", "512Mi"),
        )
        verifier = servers.deployment(
            "verifier",
            ports={"https": VERIFIER_PORT},
            probe_port=VERIFIER_PORT,
            # 7.13-7.14.0 templates put `mode` in the wrong section; the variable is read before any file.
            env={"KEYLIME_VERIFIER_MODE": "push"},
            size=resources("200m", "256Mi", "1", "1Gi"),
        )
        self.tenant = servers.deployment(
            "tenant",
            ports={},
            probe_port=None,
            env={},
            size=resources("50m", "128Mi", "500m", "512Mi"),
        )
        registrar_service = servers.node_port_service(
            "registrar",
            {
                "http": (REGISTRAR_PORT, args.registrar_node_port),
                "https": (REGISTRAR_TLS_PORT, args.registrar_tls_node_port),
            },
        )
        verifier_service = servers.node_port_service("verifier", {"https": (VERIFIER_PORT, args.verifier_node_port)})
        for policy_name, spec in (
            ("default-deny-ingress", deny_all_ingress()),
            (
                "registrar-ingress",
                allow_ingress({"app.kubernetes.io/name": "keylime-registrar"}, [REGISTRAR_PORT, REGISTRAR_TLS_PORT]),
            ),
            ("verifier-ingress", allow_ingress({"app.kubernetes.io/name": "keylime-verifier"}, [VERIFIER_PORT])),
        ):
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy_name}",
                metadata={"name": f"keylime-{policy_name}", "namespace": KEYLIME_NAMESPACE},
                spec=spec,
                opts=in_namespace,
            )
        self.workloads = [registrar, verifier, self.tenant, registrar_service, verifier_service]
        self.register_outputs({"cluster_name": args.cluster_name})


def _tls_secret(component: str) -> str:
    return f"keylime-{component}-tls"


def _metadata(name: str, component: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": KEYLIME_NAMESPACE,
        "labels": {"app.kubernetes.io/name": f"keylime-{component}", "app.kubernetes.io/part-of": "keylime-push"},
    }
    if annotations:
        metadata["annotations"] = annotations
    return metadata


@dataclasses.dataclass(frozen=True)
class _Servers:
    """What every server object in the namespace shares: names, images, user and group, and resource options."""

    name: str
    images: dict[str, BuiltImage]
    uid: int
    gid: int
    config_files: dict[str, str]
    """The ConfigMap's data: each server mounts its own file."""
    secrets: dict[str, dict[str, pulumi.Input[str]]]
    """Each server's TLS Secret data."""
    opts: pulumi.ResourceOptions

    def deployment(
        self,
        component: str,
        ports: dict[str, int],
        probe_port: int | None,
        env: dict[str, str],
        size: dict[str, Any],
    ) -> k8s.apps.v1.Deployment:
        uid, gid = self.uid, self.gid
        labels = {"app.kubernetes.io/name": f"keylime-{component}"}
        config_file, secret = f"{component}.conf", _tls_secret(component)
        persistent = component in ("registrar", "verifier")
        if persistent:
            # sqlite on a PVC (Kind's default local-path class): enrollments and registrations survive
            # pod restarts and rescheduling for as long as the cluster exists.
            k8s.core.v1.PersistentVolumeClaim(
                f"{self.name}-{component}-data",
                metadata=_metadata(
                    f"keylime-{component}-data",
                    component,
                    # local-path binds on first use; waiting for Bound before the pod exists would never end.
                    {"pulumi.com/skipAwait": "true"},
                ),
                spec={"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": DATA_CAPACITY}}},
                opts=self.opts,
            )
        data_volume = (
            {"name": "data", "persistentVolumeClaim": {"claimName": f"keylime-{component}-data"}}
            if persistent
            else empty_dir("data")
        )
        probe = {"tcpSocket": {"port": probe_port}, "periodSeconds": 10} if probe_port else None
        container: dict[str, Any] = {
            "name": component,
            "image": self.images[component].ref,
            "imagePullPolicy": "IfNotPresent",
            "env": [
                {"name": f"KEYLIME_{component.upper()}_CONFIG", "value": f"{keylime_conf.CONF_DIR}/{component}.conf"},
                {"name": "KEYLIME_DIR", "value": keylime_conf.DATA_DIR},
                *({"name": key, "value": value} for key, value in env.items()),
            ],
            "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
            "securityContext": container_security_context(uid, gid),
            "resources": size,
            "volumeMounts": [
                {"name": "config", "mountPath": keylime_conf.CONF_DIR, "readOnly": True},
                {"name": "tls", "mountPath": keylime_conf.TLS_DIR, "readOnly": True},
                {"name": "data", "mountPath": keylime_conf.DATA_DIR},
                {"name": "run", "mountPath": "/run/keylime"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        specific: dict[str, str] = {}
        if probe:
            container["readinessProbe"] = {**probe, "initialDelaySeconds": 3}
            container["livenessProbe"] = {**probe, "initialDelaySeconds": 15}
        else:
            container["command"] = ["sleep", "infinity"]
            idle = "the tenant is an idle container for kubectl exec keylime_tenant and serves nothing to probe"
            specific = {"CKV_K8S_8": idle, "CKV_K8S_9": idle}
        return k8s.apps.v1.Deployment(
            f"{self.name}-{component}",
            metadata=_metadata(
                f"keylime-{component}", component, checkov_waivers("CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_15", **specific)
            ),
            spec={
                "replicas": 1,
                # One sqlite writer: the old pod must stop before the new one opens the database.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {
                        "labels": labels,
                        # Exactly what this pod reads: its own file of the ConfigMap, and its own Secret.
                        "annotations": inputs_annotation(
                            {CONFIG_MAP: {config_file: self.config_files[config_file]}, secret: self.secrets[component]}
                        ),
                    },
                    "spec": {
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
                    },
                },
            },
            opts=self.opts,
        )

    def node_port_service(self, component: str, ports: dict[str, tuple[int, int]]) -> k8s.core.v1.Service:
        return k8s.core.v1.Service(
            f"{self.name}-{component}-service",
            metadata=_metadata(SERVICE_NAMES[component], component),  # type: ignore[index]
            spec={
                "type": "NodePort",
                "selector": {"app.kubernetes.io/name": f"keylime-{component}"},
                "ports": [
                    {"name": port_name, "port": port, "targetPort": port, "nodePort": node_port}
                    for port_name, (port, node_port) in ports.items()
                ],
            },
            opts=self.opts,
        )
