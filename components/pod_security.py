"""Pod and container hardening shared by every workload, and checkov waivers written where they apply."""

from __future__ import annotations

from typing import Any

RUNTIME_DEFAULT_SECCOMP = {"type": "RuntimeDefault"}

# Why some checkov rules cannot hold for this deployment; each workload lists the ones it waives.
WAIVERS = {
    "CKV_K8S_40": "uid/gid 490 is the keylime system user convention (SLES), kept identical in image and pod",
    "CKV_K8S_43": "images are built by the program (loaded into Kind or the VM, or pushed to imageRegistry); the fixed "
    "tag carries the build's content hash",
    "CKV_K8S_15": "the tag carries the image's content hash, so IfNotPresent never runs a stale one; Kind- and VM-loaded "
    "images cannot be pulled at all (Always would fail)",
}


def checkov_waivers(*checks: str, **reasons: str) -> dict[str, str]:
    """`checkov.io/skipN` annotations: the shared waivers named in `checks`, then workload-specific ones."""
    waived = {**{check: WAIVERS[check] for check in checks}, **reasons}
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(waived.items(), start=1)}


def pod_security_context(uid: int, gid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        # Volumes (emptyDir, PVC) become group-writable for the workload's own group.
        "fsGroup": gid,
        "seccompProfile": RUNTIME_DEFAULT_SECCOMP,
    }


def container_security_context(uid: int, gid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": RUNTIME_DEFAULT_SECCOMP,
    }


def resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


def empty_dir(name: str, size: str = "64Mi") -> dict[str, Any]:
    return {"name": name, "emptyDir": {"sizeLimit": size}}


def deny_all_ingress() -> dict[str, Any]:
    """NetworkPolicy spec: no pod in the namespace accepts connections unless another policy allows it."""
    return {"podSelector": {}, "policyTypes": ["Ingress"]}


def allow_ingress(labels: dict[str, str], ports: list[int]) -> dict[str, Any]:
    """NetworkPolicy spec: `ports` of the pods with `labels` accept connections from anywhere.

    Agents come in through NodePorts (their source is the node, or another cluster's node), so the
    allowed peers cannot be narrowed to pods.
    """
    return {
        "podSelector": {"matchLabels": labels},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": port} for port in ports]}],
    }
