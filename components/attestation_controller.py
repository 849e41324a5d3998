"""AttestationController: `python -m controller run` in keylime-infra, with scoped access to every agent cluster.

Each agent cluster gets, through its own Kubernetes provider, a ServiceAccount whose rights are exactly what
the controller uses there (controller/kube.py): nodes get/list/patch and nodes/status patch, agent pods
get/list in the agent namespace, Events create in the namespace it writes them to. Nothing else: no
Secrets, no wildcard. A long-lived token Secret of that ServiceAccount becomes, as a Pulumi secret, a
kubeconfig in a Secret of the infra cluster; that is the only credential the controller holds. A token
Secret rather than a TokenRequest: a requested token expires and nothing in the controller renews it,
while this one lives exactly as long as the ServiceAccount, which `pulumi destroy` removes with it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.endpoints import KEYLIME_NAMESPACE
from components.pki import IssuedCertificate
from components.pod_security import (
    allow_ingress,
    checkov_waivers,
    container_security_context,
    empty_dir,
    pod_security_context,
    resources,
)
from components.rollout import inputs_annotation

NAME = "keylime-attestation-controller"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "keylime-push"}
METRICS_PORT = 9090
# controller/kube.py writes its Events there (EVENT_NAMESPACE): Nodes are cluster-scoped.
EVENT_NAMESPACE = "default"
AGENT_SELECTOR = "app.kubernetes.io/name=keylime-agent"
CONFIG_DIR = "/etc/keylime-controller"
POLICY_FILE = f"{CONFIG_DIR}/policy/tpm_policy.json"
MB_POLICY_FILE = f"{CONFIG_DIR}/policy/mb_policy.json"
TLS_DIR = f"{CONFIG_DIR}/tls"
CLUSTERS_DIR = f"{CONFIG_DIR}/clusters"
CLUSTERS_FILE = f"{CLUSTERS_DIR}/clusters.json"
EK_TRUST_DIR = f"{CONFIG_DIR}/ek-trust"
MONITORING_API = "monitoring.coreos.com/v1"
# A pass every 10 s; an agent whose last successful attestation is older than this is stale.
STALE_AFTER_SECONDS = 300

NODE_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]},
    # The KeylimeAttested condition lives in the node's status subresource.
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
]
POD_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
EVENTS_IN_DEFAULT = (
    "Events about Nodes (cluster-scoped) go to the default namespace, as the kubelet's do; the Role there grants "
    "only events create"
)
EVENT_RULES = [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]


@dataclasses.dataclass
class WatchedCluster:
    """An agent cluster as the controller sees it."""

    name: str
    api_server: str
    """The API server's URL as dialled from a pod of the infra cluster."""
    provider: k8s.Provider
    agent_namespace_ready: pulumi.Resource
    """Exists only once the agent namespace does."""
    deleted_with: pulumi.Resource | None
    """The cluster itself, when the program owns it: its objects go with it. None: each object is deleted."""


@dataclasses.dataclass
class AttestationControllerArgs:
    image: str
    infra_provider: k8s.Provider
    infra_ready: list[pulumi.Resource]
    """What the controller's infra objects wait for: the keylime namespace, the loaded images, and whatever must
    have acted before the controller does (the deploy-time enrollment)."""
    infra_cluster: pulumi.Resource | None
    """What deletes the controller's objects in the servers' cluster with it (a Kind cluster); None on a cluster
    the program does not own: each is deleted for real."""
    registrar_url: str
    verifier_url: str
    ca_cert_pem: pulumi.Input[str]
    client_cert: IssuedCertificate
    tpm_policy_json: str
    mb_policy_json: str
    """The measured-boot reference state agents are enrolled with (as the deploy-time enrollment's MB_POLICY); empty: none."""
    clusters: list[WatchedCluster]
    uid: int
    gid: int
    taint_effect: str
    ek_trust_pem: pulumi.Input[str] | None
    """requireEkCert: the CA certificates an agent's EK certificate must be signed by; None: EKs are not checked."""
    prometheus_operator: bool
    """The infra cluster serves the Prometheus Operator's CRDs: declare a ServiceMonitor and alert rules."""


def kubeconfig_file(cluster: str) -> str:
    """The Secret key (and file) of a cluster's kubeconfig. Keys allow only [-._a-zA-Z0-9], and kubeconfig contexts
    are often named like kubeadm's `kubernetes-admin@kubernetes`: anything else becomes `_`, and a digest of the
    name keeps two names that differ only there apart."""
    safe = re.sub(r"[^-._a-zA-Z0-9]", "_", cluster)
    suffix = "" if safe == cluster else "-" + hashlib.sha256(cluster.encode()).hexdigest()[:8]
    return f"{safe}{suffix}.kubeconfig"


def kubeconfig(cluster: str, api_server: str, token_data: dict[str, str]) -> str:
    """A kubeconfig that authenticates with the ServiceAccount token and trusts the cluster's CA from the same Secret."""
    token = base64.b64decode(token_data["token"]).decode()
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": cluster, "cluster": {"server": api_server, "certificate-authority-data": token_data["ca.crt"]}}
            ],
            "users": [{"name": NAME, "user": {"token": token}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": NAME, "namespace": KEYLIME_NAMESPACE}}],
            "current-context": cluster,
        },
        sort_keys=False,
    )


class AttestationController(pulumi.ComponentResource):
    deployment: k8s.apps.v1.Deployment
    policy: k8s.core.v1.ConfigMap

    def __init__(self, name: str, args: AttestationControllerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:controller:AttestationController", name, None, opts)
        kubeconfigs = {cluster.name: self._grant(name, cluster) for cluster in args.clusters}

        on_infra = pulumi.ResourceOptions(
            parent=self, provider=args.infra_provider, deleted_with=args.infra_cluster, depends_on=args.infra_ready
        )
        # Both policies, re-read every pass: a change of either re-enrolls every agent, with no restart.
        policy_files = {"tpm_policy.json": args.tpm_policy_json, "mb_policy.json": args.mb_policy_json}
        self.policy = k8s.core.v1.ConfigMap(
            f"{name}-policy",
            metadata=_metadata(f"{NAME}-policy"),
            data=policy_files,
            opts=on_infra,
        )
        clusters_file = json.dumps({cluster: f"{CLUSTERS_DIR}/{kubeconfig_file(cluster)}" for cluster in sorted(kubeconfigs)})
        files_by_name = pulumi.Output.all(**kubeconfigs).apply(
            lambda files: {"clusters.json": clusters_file, **{kubeconfig_file(c): files[c] for c in sorted(files)}}
        )
        # pulumi's Output.secret typing cannot infer from an Output[dict] argument
        clusters_files = pulumi.Output.secret(files_by_name)  # type: ignore[var-annotated, arg-type]
        clusters = k8s.core.v1.Secret(
            f"{name}-clusters",
            metadata=_metadata(f"{NAME}-clusters"),
            type="Opaque",
            string_data=clusters_files,
            opts=on_infra,
        )
        tls_files = {
            "cacert.crt": args.ca_cert_pem,
            "client-cert.crt": args.client_cert.cert_pem,
            "client-private.pem": args.client_cert.private_key_pem,
        }
        tls = k8s.core.v1.Secret(
            f"{name}-tls",
            metadata=_metadata(f"{NAME}-tls"),
            type="Opaque",
            string_data=tls_files,
            opts=on_infra,
        )
        ek_trust: list[pulumi.Resource] = []
        if args.ek_trust_pem is not None:
            ek_trust.append(
                k8s.core.v1.Secret(
                    f"{name}-ek-trust",
                    metadata=_metadata(f"{NAME}-ek-trust"),
                    type="Opaque",
                    string_data={"tpm-manufacturer.pem": args.ek_trust_pem},
                    opts=on_infra,
                )
            )
        # The controller re-reads its policy file every pass, but a new certificate or new clusters need a new
        # process: the pod template carries the digest of everything it mounts (components/rollout.py).
        mounted: dict[str, Any] = {
            f"{NAME}-policy": policy_files,
            f"{NAME}-tls": tls_files,
            f"{NAME}-clusters": clusters_files,
        }
        if args.ek_trust_pem is not None:
            mounted[f"{NAME}-ek-trust"] = {"tpm-manufacturer.pem": args.ek_trust_pem}
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=_metadata(NAME, checkov_waivers("CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_15")),
            spec={
                "replicas": 1,
                # Two controllers would fight over the same enrollments and taints.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                "template": {
                    "metadata": {"labels": LABELS, "annotations": inputs_annotation(mounted)},
                    "spec": _pod_spec(args),
                },
            },
            opts=pulumi.ResourceOptions.merge(
                on_infra, pulumi.ResourceOptions(depends_on=[self.policy, clusters, tls, *ek_trust])
            ),
        )
        service = k8s.core.v1.Service(
            f"{name}-metrics",
            metadata=_metadata(f"{NAME}-metrics"),
            spec={
                "type": "ClusterIP",
                "selector": {"app.kubernetes.io/name": NAME},
                "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT}],
            },
            opts=on_infra,
        )
        # The keylime namespace denies all ingress by default (InfraCluster): open the metrics port only.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-metrics-ingress",
            metadata={"name": f"{NAME}-metrics-ingress", "namespace": KEYLIME_NAMESPACE},
            spec=allow_ingress({"app.kubernetes.io/name": NAME}, [METRICS_PORT]),
            opts=on_infra,
        )
        if args.prometheus_operator:
            self._monitoring(name, pulumi.ResourceOptions.merge(on_infra, pulumi.ResourceOptions(depends_on=[service])))
        self.register_outputs({"deployment": self.deployment.metadata.name})

    def _grant(self, name: str, cluster: WatchedCluster) -> pulumi.Output[str]:
        """The controller's rights in one agent cluster, and the kubeconfig that carries exactly them."""
        prefix = f"{name}-{cluster.name}"
        opts = pulumi.ResourceOptions(
            parent=self, provider=cluster.provider, deleted_with=cluster.deleted_with, depends_on=[cluster.agent_namespace_ready]
        )
        account = k8s.core.v1.ServiceAccount(
            f"{prefix}-account",
            metadata={"name": NAME, "namespace": KEYLIME_NAMESPACE, "labels": LABELS},
            automount_service_account_token=False,
            opts=opts,
        )
        subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": KEYLIME_NAMESPACE}]
        nodes = k8s.rbac.v1.ClusterRole(
            f"{prefix}-nodes", metadata={"name": f"{NAME}-nodes", "labels": LABELS}, rules=NODE_RULES, opts=opts
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{prefix}-nodes-binding",
            metadata={"name": f"{NAME}-nodes", "labels": LABELS},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{NAME}-nodes"},
            subjects=subject,
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[nodes, account])),
        )
        for role, namespace, rules in (("pods", KEYLIME_NAMESPACE, POD_RULES), ("events", EVENT_NAMESPACE, EVENT_RULES)):
            metadata = {"name": f"{NAME}-{role}", "namespace": namespace, "labels": LABELS}
            if namespace == "default":
                metadata["annotations"] = checkov_waivers(CKV_K8S_21=EVENTS_IN_DEFAULT)
            granted = k8s.rbac.v1.Role(
                f"{prefix}-{role}",
                metadata=metadata,
                rules=rules,
                opts=opts,
            )
            k8s.rbac.v1.RoleBinding(
                f"{prefix}-{role}-binding",
                metadata=metadata,
                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{NAME}-{role}"},
                subjects=subject,
                opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[granted, account])),
            )
        token = k8s.core.v1.Secret(
            f"{prefix}-token",
            metadata={
                "name": f"{NAME}-token",
                "namespace": KEYLIME_NAMESPACE,
                "labels": LABELS,
                "annotations": {
                    "kubernetes.io/service-account.name": NAME,
                    # The token controller fills the Secret in after it is created: read it only then.
                    "pulumi.com/waitFor": "jsonpath={.data.token}",
                },
            },
            type="kubernetes.io/service-account-token",
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=[account], additional_secret_outputs=["data"])
            ),
        )
        return pulumi.Output.secret(token.data.apply(lambda data: kubeconfig(cluster.name, cluster.api_server, data)))

    def _monitoring(self, name: str, opts: pulumi.ResourceOptions) -> None:
        k8s.apiextensions.CustomResource(
            f"{name}-service-monitor",
            api_version=MONITORING_API,
            kind="ServiceMonitor",
            metadata=_metadata(NAME),
            spec={
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                "endpoints": [{"port": "metrics", "interval": "30s"}],
            },
            opts=opts,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-alerts",
            api_version=MONITORING_API,
            kind="PrometheusRule",
            metadata=_metadata(f"{NAME}-alerts"),
            spec={"groups": [{"name": "keylime-attestation", "rules": ALERTS}]},
            opts=opts,
        )


ALERTS = [
    {
        "alert": "KeylimeAttestationFailed",
        "expr": 'keylime_agent_status{status="FAIL"} == 1',
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": (
                "Agent {{ $labels.uuid }} on {{ $labels.cluster }}/{{ $labels.node }} failed attestation; "
                "the node is tainted."
            )
        },
    },
    {
        "alert": "KeylimeAttestationStale",
        "expr": f"time() - keylime_agent_last_successful_attestation_timestamp_seconds > {STALE_AFTER_SECONDS}",
        "for": "1m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": f"Agent {{{{ $labels.uuid }}}} has not attested successfully for {STALE_AFTER_SECONDS} s."},
    },
    {
        "alert": "KeylimeVerifierDown",
        "expr": "keylime_verifier_up == 0 or absent(keylime_verifier_up)",
        "for": "2m",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "The keylime verifier does not answer the attestation controller: nothing is being attested."},
    },
]


def _metadata(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": KEYLIME_NAMESPACE, "labels": LABELS}
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _pod_spec(args: AttestationControllerArgs) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/metrics", "port": METRICS_PORT}, "periodSeconds": 10, "timeoutSeconds": 5}
    env = {
        "REGISTRAR_URL": args.registrar_url,
        "VERIFIER_URL": args.verifier_url,
        "KEYLIME_CA": f"{TLS_DIR}/cacert.crt",
        "CLIENT_CERT": f"{TLS_DIR}/client-cert.crt",
        "CLIENT_KEY": f"{TLS_DIR}/client-private.pem",
        "POLICY_FILE": POLICY_FILE,
        "MB_POLICY_FILE": MB_POLICY_FILE,
        "CLUSTERS_FILE": CLUSTERS_FILE,
        "AGENT_NAMESPACE": KEYLIME_NAMESPACE,
        "AGENT_SELECTOR": AGENT_SELECTOR,
        "TAINT_EFFECT": args.taint_effect,
        "METRICS_PORT": str(METRICS_PORT),
        **({"EK_TRUST_DIR": EK_TRUST_DIR} if args.ek_trust_pem is not None else {}),
    }
    ek_trust = args.ek_trust_pem is not None
    return {
        "enableServiceLinks": False,
        # It reads no object of the infra cluster: its only API credentials are the scoped kubeconfigs.
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(args.uid, args.gid),
        "containers": [
            {
                "name": "controller",
                "image": args.image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["run"],
                "env": [{"name": key, "value": value} for key, value in env.items()],
                "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                "readinessProbe": {**probe, "initialDelaySeconds": 3},
                "livenessProbe": {**probe, "initialDelaySeconds": 15},
                "securityContext": container_security_context(args.uid, args.gid),
                "resources": resources("50m", "128Mi", "500m", "512Mi"),
                "volumeMounts": [
                    {"name": "policy", "mountPath": f"{CONFIG_DIR}/policy", "readOnly": True},
                    {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                    {"name": "clusters", "mountPath": CLUSTERS_DIR, "readOnly": True},
                    *([{"name": "ek-trust", "mountPath": EK_TRUST_DIR, "readOnly": True}] if ek_trust else []),
                    # The kubernetes client writes a kubeconfig's inline CA to a temporary file.
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "policy", "configMap": {"name": f"{NAME}-policy"}},
            {"name": "tls", "secret": {"secretName": f"{NAME}-tls", "defaultMode": 0o440}},
            {"name": "clusters", "secret": {"secretName": f"{NAME}-clusters", "defaultMode": 0o440}},
            *([{"name": "ek-trust", "secret": {"secretName": f"{NAME}-ek-trust", "defaultMode": 0o440}}] if ek_trust else []),
            empty_dir("tmp"),
        ],
    }
