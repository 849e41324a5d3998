"""AgentCluster: one Kind cluster `keylime-agents-<n>` running the push agent beside a software TPM."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import keylime_conf
from components.endpoints import KEYLIME_NAMESPACE
from components.images import KeylimeImages
from components.kind_cluster import KindCluster, KindClusterArgs
from components.pod_security import (
    checkov_waivers,
    container_security_context,
    deny_all_ingress,
    empty_dir,
    pod_security_context,
    resources,
)
from components.settings import Settings

SWTPM_PORT = 2321
SWTPM_CTRL_PORT = 2322
SWTPM_TCTI = f"swtpm:host=localhost,port={SWTPM_PORT}"
SWTPM_STATE_DIR = "/var/lib/swtpm"
SCRIPTS_DIR = "/opt/keylime-push"
SWTPM_INIT_SCRIPT = Path(__file__).with_name("scripts") / "swtpm-init.sh"
AGENT_CONFIG = "keylime-agent-config"
CA_SECRET = "keylime-ca"
LABELS = {"app.kubernetes.io/name": "keylime-agent"}


def agent_cluster_name(index: int) -> str:
    return f"keylime-agents-{index}"


@dataclasses.dataclass
class AgentClusterArgs:
    settings: Settings
    index: int
    ca_cert_pem: pulumi.Input[str]
    images: KeylimeImages


def agent_env(settings: Settings) -> list[dict[str, str]]:
    """The agent's environment; everything else it reads comes from agent.conf."""
    return [
        {"name": "KEYLIME_AGENT_CONFIG", "value": f"{keylime_conf.CONF_DIR}/agent.conf"},
        {"name": "TCTI", "value": SWTPM_TCTI},
        # The image's default run_as ("keylime:tss") would try to drop root privileges the pod never grants.
        {"name": "KEYLIME_AGENT_RUN_AS", "value": ""},
        # PoP bearer tokens: the verifier authorises agents by them (mandatory since rust-keylime 0.2.9).
        {"name": "KEYLIME_AGENT_ENABLE_AUTHENTICATION", "value": "true"},
        # The authentication client verifies the verifier through the system trust store, not verifier_tls_ca_cert.
        {"name": "SSL_CERT_FILE", "value": f"{keylime_conf.TLS_DIR}/{keylime_conf.CA_CERT}"},
        {"name": "RUST_LOG", "value": "keylime_push_model_agent=info,keylime=info"},
    ]


class AgentCluster(pulumi.ComponentResource):
    kind: KindCluster
    daemon_set: k8s.apps.v1.DaemonSet

    def __init__(self, name: str, args: AgentClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:agents:AgentCluster", name, None, opts)
        settings = args.settings
        agent_image = args.images.refs["agent"]
        self.kind = KindCluster(
            name,
            KindClusterArgs(
                cluster_name=agent_cluster_name(args.index),
                images={agent_image: args.images.built["agent"]},
            ),
            pulumi.ResourceOptions(parent=self),
        )
        objects = pulumi.ResourceOptions(
            parent=self, provider=self.kind.provider, deleted_with=self.kind.cluster, depends_on=[self.kind.images_loaded]
        )
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": KEYLIME_NAMESPACE}, opts=objects)
        objects = pulumi.ResourceOptions.merge(objects, pulumi.ResourceOptions(depends_on=[namespace]))

        def metadata(object_name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
            return {
                "name": object_name,
                "namespace": KEYLIME_NAMESPACE,
                "labels": {**LABELS, "app.kubernetes.io/part-of": "keylime-push"},
                **({"annotations": annotations} if annotations else {}),
            }

        ca_secret = k8s.core.v1.Secret(
            f"{name}-ca",
            metadata=metadata(CA_SECRET),
            type="Opaque",
            string_data={keylime_conf.CA_CERT: args.ca_cert_pem},
            opts=objects,
        )
        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=metadata(AGENT_CONFIG),
            data={"agent.conf": keylime_conf.agent_conf(settings), "swtpm-init.sh": SWTPM_INIT_SCRIPT.read_text()},
            opts=objects,
        )
        # The agent only dials out; nothing may connect to it (its TPM listens on loopback only).
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny-ingress",
            metadata=metadata("keylime-default-deny-ingress"),
            spec=deny_all_ingress(),
            opts=objects,
        )
        uid, gid = settings.agent_uid, settings.agent_gid
        security = container_security_context(uid, gid)
        swtpm_probe = {"exec": {"command": ["swtpm_ioctl", "--tcp", f"127.0.0.1:{SWTPM_CTRL_PORT}", "-c"]}}
        probe_reason = "the push agent opens no port (it only dials out); a crash restarts the container"
        self.daemon_set = k8s.apps.v1.DaemonSet(
            f"{name}-agent",
            metadata=metadata(
                "keylime-agent",
                checkov_waivers("CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_15", CKV_K8S_8=probe_reason, CKV_K8S_9=probe_reason),
            ),
            spec={
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        # A Service named keylime-agent would inject KEYLIME_AGENT_* variables, which the agent reads as config.
                        "enableServiceLinks": False,
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security_context(uid, gid),
                        "initContainers": [
                            {
                                # Creates the TPM's EK and EK certificate once per pod; as the agent's own user,
                                # because its local CA lives in the pod's state volume (see the script).
                                "name": "swtpm-init",
                                "image": agent_image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["/bin/bash", f"{SCRIPTS_DIR}/swtpm-init.sh"],
                                "env": [{"name": "SWTPM_STATE_DIR", "value": SWTPM_STATE_DIR}],
                                "securityContext": security,
                                "resources": resources("50m", "32Mi", "500m", "128Mi"),
                                "volumeMounts": [
                                    {"name": "swtpm-state", "mountPath": SWTPM_STATE_DIR},
                                    {"name": "config", "mountPath": SCRIPTS_DIR, "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            },
                            {
                                # A native sidecar: started, and probed ready, before the agent starts.
                                "name": "swtpm",
                                "image": agent_image,
                                "imagePullPolicy": "IfNotPresent",
                                "restartPolicy": "Always",
                                "command": [
                                    "swtpm", "socket", "--tpm2",
                                    "--tpmstate", f"dir={SWTPM_STATE_DIR}",
                                    # Loopback only: the TPM is the pod's own, no other pod may talk to it.
                                    "--server", f"type=tcp,port={SWTPM_PORT},bindaddr=127.0.0.1",
                                    "--ctrl", f"type=tcp,port={SWTPM_CTRL_PORT},bindaddr=127.0.0.1",
                                    "--flags", "startup-clear",
                                ],
                                "startupProbe": {**swtpm_probe, "periodSeconds": 1, "failureThreshold": 30},
                                "livenessProbe": {**swtpm_probe, "periodSeconds": 20},
                                "securityContext": security,
                                "resources": resources("50m", "32Mi", "500m", "128Mi"),
                                "volumeMounts": [
                                    {"name": "swtpm-state", "mountPath": SWTPM_STATE_DIR},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            },
                        ],
                        "containers": [
                            {
                                "name": "agent",
                                "image": agent_image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["/bin/keylime_push_model_agent"],
                                "env": agent_env(settings),
                                "securityContext": security,
                                "resources": resources("50m", "64Mi", "500m", "256Mi"),
                                "volumeMounts": [
                                    {"name": "config", "mountPath": keylime_conf.CONF_DIR, "readOnly": True},
                                    {"name": "ca", "mountPath": keylime_conf.TLS_DIR, "readOnly": True},
                                    {"name": "keylime-dir", "mountPath": keylime_conf.AGENT_KEYLIME_DIR},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": AGENT_CONFIG, "defaultMode": 0o555}},
                            {"name": "ca", "secret": {"secretName": CA_SECRET, "defaultMode": 0o444}},
                            # The TPM's state lives as long as the pod: a new pod is a new TPM with a new EK,
                            # so a new hash_ek UUID that registers on its own and needs `make enroll`.
                            empty_dir("swtpm-state", "16Mi"),
                            empty_dir("keylime-dir", "64Mi"),
                            empty_dir("tmp"),
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(objects, pulumi.ResourceOptions(depends_on=[ca_secret, config])),
        )
        self.register_outputs({"cluster_name": agent_cluster_name(args.index)})
