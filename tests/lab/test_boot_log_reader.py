"""hwtpm with an mbPolicy: the agent pod's boot-log init container, run as declared against a stand-in for
securityfs (the event log's mode and owner: 0440, root:root), and the agent reading the copy as its own user.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import boot_log
from tools.lab.declared import cluster
from tools.lab.pod import Pod
from tools.offline import run_program

pytestmark = pytest.mark.lab

SECURITYFS_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
LOG = boot_log.encode(boot_log.synthetic_boot())


@pytest.fixture(scope="module")
def pod(synthetic_refstate) -> Iterator[Pod]:
    program = run_program("hwtpm", {"mbPolicy": synthetic_refstate, "tpmPolicy": "{}"})
    vm_cluster = cluster(program, "vm-k8s")
    root = Path(tempfile.mkdtemp(prefix="keylime-lab-vm-"))
    root.chmod(0o755)  # traversable by the pod's users
    securityfs = root / "binary_bios_measurements"
    securityfs.write_bytes(LOG)
    os.chown(securityfs, 0, 0)
    securityfs.chmod(0o440)
    spec = vm_cluster.pod_spec("DaemonSet", "keylime-agent")
    # The node's own state directories, as the node-state step leaves them (they exist; what is in them
    # does not matter here).
    node = root / "node"
    for volume in spec["volumes"]:
        if volume.get("hostPath", {}).get("type") == "Directory":
            (node / volume["hostPath"]["path"].lstrip("/")).mkdir(parents=True)
    yield Pod(root / "pod", vm_cluster, spec, node=node, host_paths={SECURITYFS_LOG: securityfs})
    subprocess.run(["rm", "-rf", str(root)], check=True)


def run_as(pod: Pod, container: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(pod.as_user(container, argv), capture_output=True, timeout=30, check=False)


def agent_log_path(pod: Pod) -> Path:
    conf = pod.path("agent", pod.declared_env("agent")["KEYLIME_AGENT_CONFIG"]).read_text()
    declared = next(line.split(" = ", 1)[1].strip('"') for line in conf.splitlines() if line.startswith("measuredboot_ml_path"))
    return pod.path("agent", declared)


def test_the_agents_own_user_cannot_read_the_event_log_where_the_kernel_puts_it(pod):
    (log_volume,) = [v["name"] for v in pod.spec["volumes"] if v.get("hostPath", {}).get("path") == SECURITYFS_LOG]
    result = run_as(pod, "agent", ["cat", str(pod.volumes[log_volume])])
    assert result.returncode != 0 and b"Permission denied" in result.stderr


def test_the_init_step_copies_the_log_and_the_agent_reads_the_copy_as_its_own_user(pod):
    (init,) = [c for c in pod.spec["initContainers"] if c["name"] == "boot-log"]
    copied = run_as(pod, "boot-log", [pod.translate("boot-log", arg) for arg in init["command"]])
    assert copied.returncode == 0, copied.stderr
    read = run_as(pod, "agent", ["cat", str(agent_log_path(pod))])
    assert read.returncode == 0, read.stderr
    assert read.stdout == LOG
