"""The lab's session: the program evaluated once, its PKI made real, its servers and an agent's TPM running.

Everything is session-scoped and torn down at the end (servers by process group, the TPM, the files).
Nothing here skips: a missing lab virtualenv or tool fails the tests with what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from tools.offline import ProgramRun, run_program

from .agent import EmulatedAgent
from .declared import Cluster, cluster, tls_declarations
from .pod import Pod
from .servers import KeylimeInfra, write_json

LAB = Path(__file__).resolve().parent
STACK = "swtpm"
INFRA_PROVIDER = "infra-k8s"
AGENT_PROVIDER = "agents-1-k8s"
KEYLIME_PROGRAMS = ("keylime_registrar", "keylime_verifier", "keylime_tenant", "python")
HOST_TOOLS = {
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "mount": "mount",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "swtpm_ioctl": "swtpm-tools",
    "tpm2_createek": "tpm2-tools",
}


@pytest.fixture(scope="session")
def lab_bin() -> Path:
    """The lab virtualenv's bin directory (`make test` builds ./venv-lab and passes LAB_BIN)."""
    value = os.environ.get("LAB_BIN")
    if not value:
        pytest.fail("LAB_BIN is not set: run the tests with `make test`, which builds ./venv-lab from "
                    "requirements-lab.txt and passes LAB_BIN=$(CURDIR)/venv-lab/bin", pytrace=False)
    bin_dir = Path(value)
    missing = [name for name in KEYLIME_PROGRAMS if not (bin_dir / name).exists()]
    if missing:
        pytest.fail(f"LAB_BIN={bin_dir} has no {', '.join(missing)}: `make venv-lab/.installed` builds it", pytrace=False)
    return bin_dir


@pytest.fixture(scope="session")
def host_tools() -> None:
    """The Debian tools the lab runs (.ci/run installs them); root, for mount namespaces and setpriv."""
    missing = [f"{tool} (apt-get install {package})" for tool, package in HOST_TOOLS.items() if not shutil.which(tool)]
    if missing:
        pytest.fail(f"the lab needs {', '.join(missing)}", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the lab runs as root: it starts each process in a private mount namespace as the pod's user",
                    pytrace=False)


@pytest.fixture(scope="session")
def program() -> ProgramRun:
    return run_program(STACK)


@pytest.fixture(scope="session")
def infra_cluster(program) -> Cluster:
    return cluster(program, INFRA_PROVIDER)


@pytest.fixture(scope="session")
def agent_cluster(program) -> Cluster:
    return cluster(program, AGENT_PROVIDER)


@pytest.fixture(scope="session")
def lab_root():
    """The lab's files; traversable by the pods' non-root users (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="keylime-lab-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


class LabPki:
    """The program's keys and certificates made real: declared placeholder -> PEM, and files of them."""

    def __init__(self, pems: dict[str, str], declarations: list[dict], directory: Path, lab_bin: Path):
        self.pems, self.declarations, self.directory, self.lab_bin = pems, declarations, directory, lab_bin

    def real(self, declared: str) -> str:
        try:
            return self.pems[declared]
        except KeyError:
            raise KeyError(f"a Secret declares a value that no pulumi-tls resource produces: {declared[:80]!r}") from None

    def output(self, resource_name: str) -> str:
        """The real PEM of a resource's main output (key, CSR or certificate)."""
        declaration = next(d for d in self.declarations if d["name"] == resource_name)
        attribute = next(a for a in ("certPem", "certRequestPem", "privateKeyPem") if a in declaration["outputs"])
        return self.real(declaration["outputs"][attribute])

    def file(self, resource_name: str) -> Path:
        path = self.directory / f"{resource_name}.pem"
        if not path.exists():
            path.write_text(self.output(resource_name))
        return path

    def describe(self, resource_name: str) -> dict:
        result = subprocess.run([str(self.lab_bin / "python"), str(LAB / "pki.py"), "describe", str(self.file(resource_name))],
                                capture_output=True, text=True, timeout=60, check=True)
        return json.loads(result.stdout)


@pytest.fixture(scope="session")
def pki(program, lab_bin, lab_root) -> LabPki:
    directory = lab_root / "pki"
    directory.mkdir()
    declarations = tls_declarations(program)
    write_json(directory / "declared.json", declarations)
    result = subprocess.run(
        [str(lab_bin / "python"), str(LAB / "pki.py"), "issue", str(directory / "declared.json"), str(directory / "real.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, f"pki.py issue failed:\n{result.stderr}"
    return LabPki(json.loads((directory / "real.json").read_text()), declarations, directory, lab_bin)


@pytest.fixture(scope="session")
def infra(request, lab_bin, host_tools, lab_root, infra_cluster, pki) -> KeylimeInfra:
    """The registrar and verifier, running; the tenant, runnable. Stopped at the end of the session."""
    servers = KeylimeInfra(lab_root / "infra", lab_bin, infra_cluster, pki.real)
    request.addfinalizer(servers.stop)
    servers.start()
    return servers


@pytest.fixture(scope="session")
def agent_pod(lab_root, agent_cluster, pki) -> Pod:
    """The first agent cluster's agent pod, its volumes materialised (the CA it trusts is the real one)."""
    return Pod(lab_root / "agent" / "pod", agent_cluster, agent_cluster.pod_spec("DaemonSet", "keylime-agent"), pki.real)


@pytest.fixture(scope="session")
def agent_conf(agent_pod) -> dict:
    """The push agent's agent.conf, as its container reads it (KEYLIME_AGENT_CONFIG)."""
    container = agent_pod.spec["containers"][0]["name"]
    return tomllib.loads(Path(agent_pod.env(container)["KEYLIME_AGENT_CONFIG"]).read_text())["agent"]


@pytest.fixture(scope="session")
def agent_ca(agent_pod, agent_conf) -> Path:
    """The CA file the push agent verifies the verifier with (agent.conf's verifier_tls_ca_cert, in its pod)."""
    return agent_pod.path(agent_pod.spec["containers"][0]["name"], agent_conf["verifier_tls_ca_cert"])


@pytest.fixture(scope="session")
def agent(request, host_tools, lab_root, agent_pod) -> EmulatedAgent:
    """The agent pod's TPM initialised and served as declared, an EK and an AK in it."""
    emulated = EmulatedAgent(agent_pod, lab_root / "agent" / "work")
    request.addfinalizer(emulated.stop)
    emulated.start()
    emulated.create_identity()
    return emulated


def node_port_target(cluster_: Cluster, node_port: int) -> int:
    """The container port a declared NodePort leads to."""
    for service in cluster_.of_kind("Service"):
        for port in service["spec"]["ports"]:
            if port.get("nodePort") == node_port:
                return port["targetPort"]
    raise KeyError(f"no Service publishes NodePort {node_port}")


@pytest.fixture(scope="session")
def registrar_url(agent_conf, infra_cluster, infra) -> str:
    """Where the agent's configured registrar address leads in the lab (its NodePort's target, on 127.0.0.1)."""
    scheme = "https" if agent_conf["registrar_tls_enabled"] else "http"
    return f"{scheme}://127.0.0.1:{node_port_target(infra_cluster, agent_conf['registrar_port'])}"


@pytest.fixture(scope="session")
def registered_agent(agent, registrar_url) -> EmulatedAgent:
    agent.register(registrar_url)
    return agent


@pytest.fixture(scope="session")
def kubectl_env(infra, lab_root) -> dict[str, str]:
    """The environment under which `kubectl` is the lab's stand-in (tests/lab/bin) for the infra cluster."""
    context = lab_root / "kubectl.json"
    write_json(context, infra.kubectl_context())
    return {**os.environ, "PATH": f"{LAB / 'bin'}:{os.environ['PATH']}", "KEYLIME_LAB_KUBECTL": str(context)}

