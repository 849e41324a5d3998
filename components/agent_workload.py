"""The push agent's Kubernetes objects, shared by the Kind agent clusters (swtpm) and the VM (hardware TPM).

Not a component of its own: AgentCluster and VtpmVm each declare these objects on their cluster, and
each is an `AgentHost`.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any, Literal, Protocol

import pulumi
import pulumi_kubernetes as k8s

from components import boot_log, keylime_conf
from components.endpoints import KEYLIME_NAMESPACE
from components.images import BuiltImage
from components.pki import IssuedCertificate
from components.pod_security import (
    checkov_waivers,
    container_security_context,
    deny_all_ingress,
    empty_dir,
    pod_security_context,
    resources,
)
from components.rollout import inputs_annotation

TpmAccess = Literal["swtpm", "device"]

SWTPM_PORT = 2321
SWTPM_CTRL_PORT = 2322
SWTPM_STATE_DIR = "/var/lib/swtpm"
# On the node: the agent's AK (agent_data.json) and, with swtpm, the software TPM's state. They live as long
# as the node, so a replaced pod is the same agent (same EK, so the same hash_ek UUID, and the same AK).
NODE_STATE_ROOT = "/var/lib/keylime-push"
AGENT_STATE_ON_NODE = f"{NODE_STATE_ROOT}/agent"
SWTPM_STATE_ON_NODE = f"{NODE_STATE_ROOT}/swtpm"
NODE_STATE_WHY = (
    f"{AGENT_STATE_ON_NODE} (and {SWTPM_STATE_ON_NODE} with swtpm) are hostPaths of type Directory, created and "
    "given to the agent's UID/GID before this pod starts, as root: on the node itself by whoever made it "
    "(kind-cluster.sh node-state through docker exec; the VM's vm-node-state over SSH with sudo), and on a "
    "cluster the program did not make by the node-state init container of the device plugin's pod, the one "
    "exception to non-root. A DirectoryOrCreate path would be root-owned, and making it the agent's from here "
    "would take a root init container with CAP_CHOWN: so no container of this pod runs as root or holds any "
    "capability."
)
TPM_MANUFACTURER_CA_SECRET = "keylime-tpm-manufacturer-ca"
TPM_MANUFACTURER_CA_DIR = "/etc/keylime/tpm-manufacturer-ca"
TPM_DEVICE = "/dev/tpmrm0"
TCTI: dict[TpmAccess, str] = {"swtpm": f"swtpm:host=localhost,port={SWTPM_PORT}", "device": f"device:{TPM_DEVICE}"}
# squat/generic-device-plugin advertises the VM's resource-managed TPM under this name.
TPM_RESOURCE = "squat.ai/tpm"
SCRIPTS_DIR = "/opt/keylime-push"
SWTPM_INIT_SCRIPT = Path(__file__).with_name("scripts") / "swtpm-init.sh"
SWTPM_BOOT_SCRIPT = Path(__file__).with_name("scripts") / "swtpm-boot.sh"
# swtpm with an mbPolicy: the synthetic boot's events, which swtpm-boot.sh extends, and its marker.
BOOT_LOG_EXTENDS = "boot-log.extends"
BOOTED_MARKER = "/tmp/measured-boot"
# hwtpm with an mbPolicy: where the boot-log init step finds the kernel's event log.
SECURITYFS_BOOT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
BOOT_LOG_SOURCE = "/run/boot-log-source/binary_bios_measurements"
BOOT_LOG_READER = (
    "The boot-log init container is the one step with more than the agent's identity: securityfs keeps the UEFI "
    "event log at mode 0440, root:root, so it runs as agentUid with group 0, every capability dropped, reads that "
    "one file (hostPath, read-only) and copies it into an emptyDir the non-root agent reads. The agent cannot drop "
    "privileges instead: keylime_push_model_agent 0.2.9 re-reads the log by path after dropping them."
)
AGENT_CONFIG = "keylime-agent-config"
CA_SECRET = "keylime-ca"
LABELS = {"app.kubernetes.io/name": "keylime-agent"}
NO_PROBE = "the push agent opens no port (it only dials out); a crash restarts the container"
# What the attestation controller (controller/kube.py) taints a node with when its agent fails or stops attesting.
# The agent, and what it needs on the node, must still run there: only they can win the node's trust back.
UNTRUSTED_TAINT = "attestation.keylime.dev/untrusted"
TOLERATE_UNTRUSTED = {"key": UNTRUSTED_TAINT, "operator": "Exists"}


class AgentHost(Protocol):
    """Where agents run (an AgentCluster or the VtpmVm): what enrollment and the stack outputs need of it."""

    host_name: str
    identity: pulumi.Output[str]
    """Changes when the host is replaced, which means new agents (new TPMs) to enroll."""
    daemon_set: k8s.apps.v1.DaemonSet
    provider: k8s.Provider
    """The host's own Kubernetes provider (admin credentials, used by the program only)."""
    api_server: str
    """Its API server's URL as a pod of the infra cluster dials it (the attestation controller)."""
    machine: pulumi.Resource | None
    """What the host's Kubernetes lives on: objects declared there go when it goes. None: a cluster the program
    does not own, whose objects must each be deleted."""


@dataclasses.dataclass
class AgentPodArgs:
    """What an agent pod needs on any host."""

    image: BuiltImage
    agent_conf: str
    """The rendered agent.conf (keylime_conf.agent_conf)."""
    uid: int
    gid: int
    ca_cert_pem: pulumi.Input[str]
    """The CA the agent trusts the registrar and the verifier by."""
    measured_boot: bool = False
    """The agent attests its boot (there is an mbPolicy), so it gets a UEFI event log to send."""


def agent_env(tpm: TpmAccess) -> list[dict[str, Any]]:
    """The agent's environment; everything else it reads comes from agent.conf.

    Nothing more is needed by 0.2.9 (keylime-push-model-agent/src/attestation.rs): PoP authentication is
    always on (KEYLIME_AGENT_ENABLE_AUTHENTICATION went with mTLS in rust-keylime 7b4628b), and both the
    attestation client and the PoP login (keylime/src/auth.rs) trust agent.conf's verifier_tls_ca_cert, so
    no SSL_CERT_FILE.
    """
    return [
        # Sent with the registration (the registrar keeps it as the agent's `ip`): the node's address, which the
        # attestation controller maps to the node the agent runs on. The agent needs no API credentials for it.
        {"name": "KEYLIME_AGENT_CONTACT_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "KEYLIME_AGENT_CONFIG", "value": f"{keylime_conf.CONF_DIR}/agent.conf"},
        {"name": "TCTI", "value": TCTI[tpm]},
        {"name": "RUST_LOG", "value": "keylime_push_model_agent=info,keylime=info"},
    ]


def node_state_dirs(tpm: TpmAccess) -> tuple[str, ...]:
    """The node directories the agent pod mounts: they must exist, owned by the agent's user."""
    return (AGENT_STATE_ON_NODE, SWTPM_STATE_ON_NODE) if tpm == "swtpm" else (AGENT_STATE_ON_NODE,)


def _node_state_volume(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": "Directory"}}


def metadata(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": KEYLIME_NAMESPACE,
        "labels": {**LABELS, "app.kubernetes.io/part-of": "keylime-push"},
        **({"annotations": annotations} if annotations else {}),
    }


def _swtpm_containers(image: str, security: dict[str, Any], measured_boot: bool, ek_ca: bool) -> list[dict[str, Any]]:
    swtpm_probe = {"exec": {"command": ["swtpm_ioctl", "--tcp", f"127.0.0.1:{SWTPM_CTRL_PORT}", "-c"]}}
    swtpm = [
        "swtpm", "socket", "--tpm2",
        "--tpmstate", f"dir={SWTPM_STATE_DIR}",
        # Loopback only: the TPM is the pod's own, no other pod may talk to it.
        "--server", f"type=tcp,port={SWTPM_PORT},bindaddr=127.0.0.1",
        "--ctrl", f"type=tcp,port={SWTPM_CTRL_PORT},bindaddr=127.0.0.1",
        "--flags", "startup-clear",
    ]
    mounts = [{"name": "swtpm-state", "mountPath": SWTPM_STATE_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    sidecar: dict[str, Any] = {"command": swtpm, "startupProbe": {**swtpm_probe, "periodSeconds": 1, "failureThreshold": 30}}
    if measured_boot:
        # The TPM's PCRs hold the synthetic boot the agent's log records, from every start on; the agent
        # starts only once they do.
        sidecar = {
            "command": ["/bin/bash", f"{SCRIPTS_DIR}/swtpm-boot.sh", *swtpm],
            "env": [
                {"name": "BOOT_LOG_EXTENDS", "value": f"{SCRIPTS_DIR}/{BOOT_LOG_EXTENDS}"},
                {"name": "BOOTED_MARKER", "value": BOOTED_MARKER},
                {"name": "TPM2TOOLS_TCTI", "value": f"swtpm:host=127.0.0.1,port={SWTPM_PORT}"},
            ],
            "startupProbe": {"exec": {"command": ["test", "-e", BOOTED_MARKER]}, "periodSeconds": 1, "failureThreshold": 30},
        }
        # a Kubernetes volume mount, whose readOnly is a bool
        mounts.append({"name": "config", "mountPath": SCRIPTS_DIR, "readOnly": True})  # type: ignore[dict-item]
    return [
        {
            # Creates the TPM's EK and EK certificate once per node, as the agent's own user: the
            # script keeps swtpm's local CA in the TPM's state directory, so no root is needed.
            "name": "swtpm-init",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/bash", f"{SCRIPTS_DIR}/swtpm-init.sh"],
            "env": [
                {"name": "SWTPM_STATE_DIR", "value": SWTPM_STATE_DIR},
                *([{"name": "TPM_MANUFACTURER_CA_DIR", "value": TPM_MANUFACTURER_CA_DIR}] if ek_ca else []),
            ],
            "securityContext": security,
            "resources": resources("50m", "32Mi", "500m", "128Mi"),
            "volumeMounts": [
                {"name": "swtpm-state", "mountPath": SWTPM_STATE_DIR},
                {"name": "config", "mountPath": SCRIPTS_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
                *([{"name": "tpm-manufacturer-ca", "mountPath": TPM_MANUFACTURER_CA_DIR, "readOnly": True}] if ek_ca else []),
            ],
        },
        {
            # A native sidecar: started, and probed ready, before the agent starts.
            "name": "swtpm",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "restartPolicy": "Always",
            **sidecar,
            "livenessProbe": {**swtpm_probe, "periodSeconds": 20},
            "securityContext": security,
            "resources": resources("50m", "32Mi", "500m", "128Mi"),
            "volumeMounts": mounts,
        },
    ]


def _boot_log_reader(image: str, uid: int) -> dict[str, Any]:
    """hwtpm: the init step that copies the kernel's UEFI event log for the non-root agent (BOOT_LOG_READER)."""
    return {
        "name": "boot-log",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp", "--", BOOT_LOG_SOURCE, keylime_conf.BOOT_LOG],
        # Group 0 may read the log (0440, root:root); user 0 and every capability stay out.
        "securityContext": container_security_context(uid, 0),
        "resources": resources("10m", "16Mi", "100m", "32Mi"),
        "volumeMounts": [
            {"name": "securityfs-boot-log", "mountPath": BOOT_LOG_SOURCE, "readOnly": True},
            {"name": "boot-log", "mountPath": keylime_conf.BOOT_LOG_DIR},
        ],
    }


def declare_agent_workload(
    name: str,
    pod_args: AgentPodArgs,
    tpm: TpmAccess,
    opts: pulumi.ResourceOptions,
    tpm_manufacturer_ca: IssuedCertificate | None = None,
    node_selector: dict[str, str] | None = None,
    shared_namespace: pulumi.Resource | None = None,
) -> k8s.apps.v1.DaemonSet:
    """Namespace, CA Secret, agent ConfigMap, deny-ingress policy and the agent DaemonSet.

    `tpm_manufacturer_ca` (swtpm): the CA each software TPM's EK certificate is signed with.
    `node_selector`: the labels of the nodes with a TPM, on a cluster whose nodes do not all have one.
    `shared_namespace`: the keylime namespace as the servers declare it when the agents run on their cluster;
    the agents join it, and its deny-all-ingress policy, instead of declaring both a second time.
    """
    namespace = shared_namespace or k8s.core.v1.Namespace(
        f"{name}-namespace", metadata={"name": KEYLIME_NAMESPACE}, opts=opts
    )
    opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[namespace]))
    ca_files = {keylime_conf.CA_CERT: pod_args.ca_cert_pem}
    ca_secret = k8s.core.v1.Secret(f"{name}-ca", metadata=metadata(CA_SECRET), type="Opaque", string_data=ca_files, opts=opts)
    files = {"agent.conf": pod_args.agent_conf}
    binary_files: dict[str, str] = {}
    if tpm == "swtpm":
        files["swtpm-init.sh"] = SWTPM_INIT_SCRIPT.read_text()
        if pod_args.measured_boot:
            # A software TPM measured no boot: the agent sends a synthetic log, its sidecar extends the PCRs to match.
            log = boot_log.encode(boot_log.synthetic_boot())
            files["swtpm-boot.sh"] = SWTPM_BOOT_SCRIPT.read_text()
            files[BOOT_LOG_EXTENDS] = "".join(f"{pcr}:sha256={digest}\n" for pcr, digest in boot_log.extends(log))
            binary_files[keylime_conf.BOOT_LOG_NAME] = base64.b64encode(log).decode()
    config = k8s.core.v1.ConfigMap(
        f"{name}-config",
        metadata=metadata(AGENT_CONFIG),
        data=files,
        **({"binary_data": binary_files} if binary_files else {}),
        opts=opts,
    )
    ready: list[pulumi.Resource] = [ca_secret, config]
    manufacturer_files: dict[str, Any] = {}
    if tpm_manufacturer_ca is not None:
        manufacturer_files[TPM_MANUFACTURER_CA_SECRET] = {
            "signkey.pem": tpm_manufacturer_ca.private_key_pem, "issuercert.pem": tpm_manufacturer_ca.cert_pem
        }
        ready.append(k8s.core.v1.Secret(
            f"{name}-tpm-manufacturer-ca",
            metadata=metadata(TPM_MANUFACTURER_CA_SECRET),
            type="Opaque",
            string_data=manufacturer_files[TPM_MANUFACTURER_CA_SECRET],
            opts=opts,
        ))
    if shared_namespace is None:
        # The agent only dials out; nothing may connect to it.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny-ingress",
            metadata=metadata("keylime-default-deny-ingress"),
            spec=deny_all_ingress(),
            opts=opts,
        )

    uid, gid, image = pod_args.uid, pod_args.gid, pod_args.image.ref
    security = container_security_context(uid, gid)
    agent_resources = resources("50m", "64Mi", "500m", "256Mi")
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": AGENT_CONFIG, "defaultMode": 0o555}},
        {"name": "ca", "secret": {"secretName": CA_SECRET, "defaultMode": 0o444}},
        _node_state_volume("agent-state", AGENT_STATE_ON_NODE),
        empty_dir("tmp"),
    ]
    pod: dict[str, Any] = {
        # A Service named keylime-agent would inject KEYLIME_AGENT_* variables, which the agent reads as config.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(uid, gid),
        "tolerations": [TOLERATE_UNTRUSTED],
        "volumes": volumes,
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    agent_mounts = [
        {"name": "config", "mountPath": keylime_conf.CONF_DIR, "readOnly": True},
        {"name": "ca", "mountPath": keylime_conf.TLS_DIR, "readOnly": True},
        {"name": "agent-state", "mountPath": keylime_conf.AGENT_KEYLIME_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    annotations = checkov_waivers("CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_15", CKV_K8S_8=NO_PROBE, CKV_K8S_9=NO_PROBE)
    if tpm == "swtpm":
        pod["initContainers"] = _swtpm_containers(image, security, pod_args.measured_boot, tpm_manufacturer_ca is not None)
        if tpm_manufacturer_ca is not None:
            manufacturer_ca = {"secretName": TPM_MANUFACTURER_CA_SECRET, "defaultMode": 0o440}
            volumes.append({"name": "tpm-manufacturer-ca", "secret": manufacturer_ca})
        volumes.append(_node_state_volume("swtpm-state", SWTPM_STATE_ON_NODE))
    else:
        # The device plugin hands the pod /dev/tpmrm0; containerd's device_ownership_from_security_context
        # gives it to runAsUser/runAsGroup, so no supplementalGroups (tss) and no privilege are needed.
        agent_resources["limits"][TPM_RESOURCE] = "1"
        agent_resources["requests"][TPM_RESOURCE] = "1"
        if pod_args.measured_boot:
            pod["initContainers"] = [_boot_log_reader(image, uid)]
            volumes.append(empty_dir("boot-log", "4Mi"))
            volumes.append({"name": "securityfs-boot-log", "hostPath": {"path": SECURITYFS_BOOT_LOG, "type": "File"}})
            agent_mounts.append({"name": "boot-log", "mountPath": keylime_conf.BOOT_LOG_DIR, "readOnly": True})
            annotations["keylime-push/boot-log"] = BOOT_LOG_READER
    pod["containers"] = [
        {
            "name": "agent",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/keylime_push_model_agent"],
            "env": agent_env(tpm),
            "securityContext": security,
            "resources": agent_resources,
            "volumeMounts": agent_mounts,
        }
    ]
    template_metadata = {
        "labels": LABELS,
        "annotations": inputs_annotation({AGENT_CONFIG: {**files, **binary_files}, CA_SECRET: ca_files, **manufacturer_files}),
    }
    return k8s.apps.v1.DaemonSet(
        f"{name}-agent",
        metadata=metadata("keylime-agent", {**annotations, "keylime-push.io/node-state": NODE_STATE_WHY}),
        spec={"selector": {"matchLabels": LABELS}, "template": {"metadata": template_metadata, "spec": pod}},
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=ready)),
    )
