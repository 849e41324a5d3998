"""The agent pod's software TPM, for real: the init script and the sidecar command line, run with swtpm here."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
from helpers import ROOT, pod_spec

from components.agent_workload import SWTPM_CTRL_PORT, SWTPM_PORT
from tools.lab.staging import reachable_temp_dir

INIT_SCRIPT = ROOT / "components" / "scripts" / "swtpm-init.sh"
RSA_EK_CERT_INDEX = "0x1c00002"
AGENT_UID = 490


def as_agent(argv: list[str]) -> list[str]:
    """Run as the agent's UID/GID with no supplementary groups, like the pod's securityContext."""
    return ["setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups", "--", *argv]


def free_port_pair() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65000:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue


@pytest.fixture
def state_dir():
    """An empty state volume the agent user owns, and beside it the init script as the ConfigMap mounts it,
    both where that user can reach them (pytest's tmp_path, and maybe the checkout, are private to root)."""
    parent = reachable_temp_dir("keylime-push-swtpm-")
    shutil.copyfile(INIT_SCRIPT, parent / INIT_SCRIPT.name)
    (parent / INIT_SCRIPT.name).chmod(0o555)
    state = parent / "state"
    state.mkdir()
    os.chown(state, AGENT_UID, AGENT_UID)
    yield state
    shutil.rmtree(parent)


def run_init(state_dir) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "SWTPM_STATE_DIR": str(state_dir), "HOME": str(state_dir)}
    script = state_dir.parent / INIT_SCRIPT.name
    return subprocess.run(as_agent(["/bin/bash", str(script)]), env=env, capture_output=True, text=True, check=False)


def test_the_init_script_creates_an_ek_certificate_as_the_non_root_agent_user(state_dir):
    result = run_init(state_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    permall = state_dir / "tpm2-00.permall"
    assert permall.stat().st_uid == AGENT_UID
    assert "Successfully created EK certificate locally" in result.stdout + result.stderr


def test_the_init_script_leaves_existing_state_alone(state_dir):
    assert run_init(state_dir).returncode == 0
    before = (state_dir / "tpm2-00.permall").read_bytes()
    again = run_init(state_dir)
    assert again.returncode == 0 and "already initialised" in again.stdout
    assert (state_dir / "tpm2-00.permall").read_bytes() == before


def test_the_sidecar_command_serves_the_tpm_and_its_probe_sees_it(swtpm, state_dir):
    assert run_init(state_dir).returncode == 0
    sidecar = pod_spec(swtpm.of_type("kubernetes:apps/v1:DaemonSet")[0])["initContainers"][1]
    port = free_port_pair()
    # The manifest's exact command line, only moved to free ports and this test's state directory.
    command = [
        arg.replace(f"port={SWTPM_PORT},", f"port={port},").replace(f"port={SWTPM_CTRL_PORT},", f"port={port + 1},")
        .replace("dir=/var/lib/swtpm", f"dir={state_dir}")
        for arg in sidecar["command"]
    ]
    probe = [arg.replace(f":{SWTPM_CTRL_PORT}", f":{port + 1}") for arg in sidecar["startupProbe"]["exec"]["command"]]
    server = subprocess.Popen(as_agent(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the startup probe never succeeded"
            time.sleep(0.1)
        tcti = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=localhost,port={port}"}
        indices = subprocess.run(["tpm2_nvreadpublic"], env=tcti, capture_output=True, text=True, check=True).stdout
        assert RSA_EK_CERT_INDEX in indices
        pcrs = subprocess.run(["tpm2_pcrread", "sha256:8"], env=tcti, capture_output=True, text=True, check=True).stdout
        assert "0x" + "0" * 64 in pcrs
    finally:
        server.terminate()
        server.wait(timeout=10)
