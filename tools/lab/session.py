"""One lab: the program evaluated for a stack, its PKI made real, its servers and an agent's TPM running.

Used by the lab tests (tests/lab/conftest.py) and by `make preflight` (tools/preflight.py). Every
piece starts on first use and `close()` stops what started, in reverse order.
"""

from __future__ import annotations

import copy
import ctypes.util
import itertools
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from components import boot_log
from components.attestation_controller import NAME as CONTROLLER_NAME
from tools.offline import ProgramRun, run_program

from .agent import AK_HANDLE, EmulatedAgent
from .declared import Cluster, cluster, tls_declarations
from .fleet import FleetAgent
from .pod import Pod
from .postgres import LISTEN_ADDRESS as DATABASE_ADDRESS
from .postgres import PostgresUnavailable, ThrowawayPostgres, server_bin
from .push import PushClient
from .servers import DEFAULT_LISTEN_ADDRESS, KeylimeInfra, write_json
from .staging import reachable_temp_dir

LAB = Path(__file__).resolve().parent
ROOT = LAB.parents[1]
INFRA_PROVIDER = "infra-k8s"
AGENT_PROVIDER = "agents-1-k8s"
# The declared Command that prepares an agent cluster's node for the agent's state (kind-cluster.sh node-state).
AGENT_NODE_STATE = "agents-1-node-state"
NODE_STATE_SCRIPT = ROOT / "components" / "scripts" / "node-state.sh"
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


class LabUnavailable(RuntimeError):  # noqa: N818 (a state of this machine, as `except LabUnavailable` reads)
    """What this machine lacks to run the lab, and how to get it."""


def check_host(lab_bin: Path) -> None:
    missing = [name for name in KEYLIME_PROGRAMS if not (lab_bin / name).exists()]
    if missing:
        raise LabUnavailable(f"{lab_bin} has no {', '.join(missing)}: `make venv-lab/.installed` builds it")
    tools = [f"{tool} (apt-get install {package})" for tool, package in HOST_TOOLS.items() if not shutil.which(tool)]
    if tools:
        raise LabUnavailable(f"the lab needs {', '.join(tools)}")
    if ctypes.util.find_library("efivar") is None:
        # keylime's measured-boot parser (and keylime-policy) decode device paths with it, through ctypes.
        raise LabUnavailable("the lab needs libefivar.so.1 (apt-get install libefivar1)")
    if os.geteuid() != 0:
        raise LabUnavailable("the lab runs as root: it starts each process in a private mount namespace as the pod's user")


class NoMeasuredBoot(ValueError):  # noqa: N818 (a state of the agent's pod, as `except NoMeasuredBoot` reads)
    """An event log was given for an agent whose pod does not attest its boot."""


class LabPki:
    """The program's keys and certificates made real: declared placeholder -> PEM, and files of them."""

    def __init__(self, pems: dict[str, str], declarations: list[dict], directory: Path, lab_bin: Path):
        self.pems, self.declarations, self.directory, self.lab_bin = pems, declarations, directory, lab_bin

    @classmethod
    def issue(cls, program: ProgramRun, directory: Path, lab_bin: Path) -> LabPki:
        directory.mkdir()
        declarations = tls_declarations(program)
        write_json(directory / "declared.json", declarations)
        result = subprocess.run(
            [
                str(lab_bin / "python"),
                str(LAB / "pki.py"),
                "issue",
                str(directory / "declared.json"),
                str(directory / "real.json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pki.py issue failed:\n{result.stderr}")
        return cls(json.loads((directory / "real.json").read_text()), declarations, directory, lab_bin)

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
        result = subprocess.run(
            [str(self.lab_bin / "python"), str(LAB / "pki.py"), "describe", str(self.file(resource_name))],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(result.stdout)


def run_enrollment(
    kubectl_env: dict[str, str], line: str, environment: dict[str, str], **overrides: str
) -> subprocess.CompletedProcess:
    """Run an enrollment Command line with its declared environment, through kube.sh and the lab's kubectl.
    The lab has one agent (EXPECTED_AGENTS=1) and polls faster."""
    env = {**kubectl_env, **environment, "EXPECTED_AGENTS": "1", "POLL_SECONDS": "0.5", **overrides}
    return subprocess.run(shlex.split(line), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def node_port_target(cluster_: Cluster, node_port: int) -> int:
    """The container port a declared NodePort leads to."""
    for service in cluster_.of_kind("Service"):
        for port in service["spec"]["ports"]:
            if port.get("nodePort") == node_port:
                return port["targetPort"]
    raise KeyError(f"no Service publishes NodePort {node_port}")


def served(cluster_: Cluster) -> dict:
    """The objects of what the lab runs from the declarations: not the attestation controller's (its policy follows
    tpmPolicy by design; the lab runs the controller itself, tests/lab/test_controller.py)."""
    return {key: body for key, body in cluster_.objects.items()
            if (body["metadata"].get("labels") or {}).get("app.kubernetes.io/name") != CONTROLLER_NAME}


class Lab:
    def __init__(
        self,
        stack: str,
        lab_bin: Path,
        overrides: Mapping[str, object] | None = None,
        listen_address: str = DEFAULT_LISTEN_ADDRESS,
        boot_log: bytes | None = None,
        on_postgres: bool = False,
        server_options: Mapping[str, Mapping[str, object]] | None = None,
        database_url: str | None = None,
    ):
        """`listen_address`: the loopback address the servers listen on; another one than the default lets
        this lab's servers run beside another lab's. `boot_log`: the event log the agent's TPM boots with, in
        place of the one its pod declares. `on_postgres`: registrar and verifier share a throwaway PostgreSQL
        instead of their sqlite files. `server_options`: see `KeylimeInfra.start`. `database_url`: registrar
        and verifier get it as KEYLIME_<SERVER>_DATABASE_URL, as the keylime-database Secret gives it them,
        and a throwaway PostgreSQL serves it (its port, its user owning the database of the same name, its
        password; its host name resolves to that server)."""
        check_host(lab_bin)
        if on_postgres or database_url:
            try:
                server_bin()
            except PostgresUnavailable as missing:
                raise LabUnavailable(str(missing)) from None
        self.stack, self.lab_bin, self.overrides = stack, lab_bin, dict(overrides or {})
        self.listen_address = listen_address
        self.boot_log = boot_log
        # Where this lab's agent nodes, pods and TPMs live; a view with another agent pod gets its own.
        self.agent_dir = "agent"
        self.on_postgres, self.server_options = on_postgres, {k: dict(v) for k, v in (server_options or {}).items()}
        self.database_url = database_url
        if database_url:
            for server in ("registrar", "verifier"):
                self.server_options.setdefault(server, {})["database_url"] = database_url
        self._stops: list = []
        self._pods = itertools.count(1)
        # Where the pods' non-root users can reach what the lab writes (pytest's own tmp_path is private to root).
        self.root = reachable_temp_dir("keylime-lab-")
        self._stops.append(lambda: shutil.rmtree(self.root, ignore_errors=True))

    def with_overrides(self, overrides: Mapping[str, object], new_agent_pod: bool = False) -> Lab:
        """The same running lab (servers, PKI) seen through the program evaluated with other config, for config
        that changes only enrollment (such as tpmPolicy), or with `new_agent_pod` also the agent's pod (such
        as mbPolicy: its agents then come from the new pod); refused if the servers would differ."""
        other = object.__new__(Lab)
        other.__dict__.update(self.__dict__)
        other.overrides = {**self.overrides, **overrides}
        for derived in ("program", "infra_cluster", "agent_cluster"):
            other.__dict__.pop(derived, None)
        changed = served(other.agent_cluster) != served(self.agent_cluster)
        if served(other.infra_cluster) != served(self.infra_cluster) or (changed and not new_agent_pod):
            raise ValueError(f"{dict(overrides)} changes what the servers or the agent run; start a new Lab for it")
        if changed:
            for derived in ("agent_pod", "agent_conf", "agent_ca", "agent_boot_log", "agent"):
                other.__dict__.pop(derived, None)
            agent_dir = Path(tempfile.mkdtemp(prefix="agent-", dir=self.root))
            agent_dir.chmod(0o755)  # the pod's users traverse it
            other.agent_dir = agent_dir.name
        other._stops = self._stops  # what runs (the new pod's TPMs too) stops when the lab it came from closes
        return other

    def close(self) -> None:
        while self._stops:
            self._stops.pop()()

    @cached_property
    def program(self) -> ProgramRun:
        return run_program(self.stack, self.overrides)

    @cached_property
    def infra_cluster(self) -> Cluster:
        return cluster(self.program, INFRA_PROVIDER)

    @cached_property
    def agent_cluster(self) -> Cluster:
        return cluster(self.program, AGENT_PROVIDER)

    @cached_property
    def pki(self) -> LabPki:
        return LabPki.issue(self.program, self.root / "pki", self.lab_bin)

    @cached_property
    def postgres(self) -> ThrowawayPostgres:
        """One database for registrar and verifier (their schemas and migration tables differ): `keylime`, or
        the one `database_url` names."""
        served = urlsplit(self.database_url) if self.database_url else None
        database = ThrowawayPostgres(self.root / "postgres", port=served.port if served else None)
        self._stops.append(database.stop)
        database.start()
        if served is None:
            database.create_database("keylime")
            return database
        user, name = served.username, served.path.lstrip("/")
        if not user or user != name or not served.password:
            raise ValueError(f"the lab serves a database owned by a user of its name, with a password; got {name}")
        database.create_database(user, served.password)
        return database

    @cached_property
    def infra(self) -> KeylimeInfra:
        """The registrar and verifier, running; the tenant, runnable."""
        database_url = self.postgres.url("keylime") if self.on_postgres else None
        other_hosts = {}
        if self.database_url:
            other_hosts[urlsplit(self.database_url).hostname or ""] = DATABASE_ADDRESS
            self.postgres  # noqa: B018 (started before the servers that dial it)
        servers = KeylimeInfra(self.root / "infra", self.lab_bin, self.infra_cluster, self.pki.real, self.listen_address,
                               database_url, other_hosts)
        self._stops.append(servers.stop)
        servers.start(self.server_options)
        return servers

    def node(self, name: str) -> Path:
        """A node of the first agent cluster, as its creator leaves it: the declared node-state Command's
        script run as root on it (if the program declares one), with the node's paths under the lab."""
        node = self.root / self.agent_dir / "nodes" / name
        if node.exists():
            return node
        node.mkdir(parents=True)
        node.chmod(0o755)
        declared = [r for r in self.program.resources if r.name == AGENT_NODE_STATE]
        if declared:
            environment = declared[0].plain["environment"]
            directories = [str(node / d.lstrip("/")) for d in environment["NODE_STATE_DIRS"].split()]
            subprocess.run(
                ["bash", str(NODE_STATE_SCRIPT), environment["NODE_STATE_OWNER"], *directories],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        return node

    def agent_pod_on(self, node: str) -> Pod:
        """A new pod of the agent DaemonSet on `node`: fresh emptyDirs, the node's hostPaths as they are."""
        return Pod(
            self.root / self.agent_dir / "pods" / f"{node}-{next(self._pods)}",
            self.agent_cluster,
            self.agent_cluster.pod_spec("DaemonSet", "keylime-agent"),
            self.pki.real,
            node=self.node(node),
        )

    @cached_property
    def agent_pod(self) -> Pod:
        """The first agent cluster's agent pod, its volumes materialised (the CA it trusts is the real one)."""
        return self.agent_pod_on("agent")

    @cached_property
    def agent_conf(self) -> dict:
        """The push agent's agent.conf, as its container reads it (KEYLIME_AGENT_CONFIG)."""
        container = self.agent_pod.spec["containers"][0]["name"]
        return tomllib.loads(Path(self.agent_pod.env(container)["KEYLIME_AGENT_CONFIG"]).read_text())["agent"]

    @cached_property
    def agent_ca(self) -> Path:
        """The CA file the push agent verifies the verifier with (agent.conf's verifier_tls_ca_cert, in its pod)."""
        return self.agent_pod.path(self.agent_pod.spec["containers"][0]["name"], self.agent_conf["verifier_tls_ca_cert"])

    def new_agent(self, name: str, foreign_ek: bool = False) -> EmulatedAgent:
        """An agent pod on a node of its own (`name`): its TPM initialised and served as declared, with an EK
        and an AK in it. `lab.agent_pod_on(name)` gives the pod that replaces it (`agent.restart`). `foreign_ek`:
        its EK certificate is signed by a CA its swtpm makes, not by the program's TPM manufacturer CA."""
        if self.boot_log is not None:
            self._install_boot_log(self.boot_log)
        pod = self.agent_pod if name == "agent" else self.agent_pod_on(name)
        if foreign_ek:
            pod.spec = copy.deepcopy(pod.spec)  # the declared spec is shared with every other pod
            for container in pod.spec["initContainers"]:
                container["env"] = [e for e in container.get("env", []) if e["name"] != "TPM_MANUFACTURER_CA_DIR"]
        emulated = EmulatedAgent(pod, self.root / self.agent_dir / "agents" / name)
        self._stops.append(emulated.stop)
        emulated.start()
        emulated.create_identity()
        return emulated

    @cached_property
    def agent(self) -> EmulatedAgent:
        return self.new_agent("agent")

    @cached_property
    def registrar_url(self) -> str:
        """Where the agent's configured registrar address leads in the lab (its NodePort's target, on the listen address)."""
        self.infra  # noqa: B018 (the servers must be up)
        scheme = "https" if self.agent_conf["registrar_tls_enabled"] else "http"
        port = node_port_target(self.infra_cluster, self.agent_conf["registrar_port"])
        return f"{scheme}://{self.listen_address}:{port}"

    @cached_property
    def verifier_address(self) -> tuple[str, int]:
        """Where the agent's configured verifier URL leads in the lab: the listen address and its NodePort's target."""
        self.infra  # noqa: B018
        return self.listen_address, node_port_target(self.infra_cluster, urlsplit(self.agent_conf["verifier_url"]).port)

    def _install_boot_log(self, log: bytes) -> None:
        """Put `log` where the pod's agent reads its event log and its TPM sidecar the PCR extends of the boot."""
        sidecar = next(c for c in self.agent_pod.spec.get("initContainers", []) if c.get("restartPolicy") == "Always")
        extends = self.agent_pod.declared_env(sidecar["name"]).get("BOOT_LOG_EXTENDS")
        if self.agent_boot_log is None or extends is None:
            raise NoMeasuredBoot("the agent's pod measures no boot: an event log needs keylime-push:mbPolicy")
        self.agent_boot_log.write_bytes(log)
        lines = [f"{pcr}:sha256={digest}" for pcr, digest in boot_log.extends(log)]
        self.agent_pod.path(sidecar["name"], extends).write_text("\n".join(lines) + "\n")

    @cached_property
    def agent_boot_log(self) -> Path | None:
        """The UEFI event log the agent reads (agent.conf's measuredboot_ml_path), when its pod provides one."""
        container = self.agent_pod.spec["containers"][0]["name"]
        try:
            path = self.agent_pod.path(container, self.agent_conf.get("measuredboot_ml_path", ""))
        except ValueError:  # on no volume: the host's securityfs (the default), which the pod does not get
            return None
        return path if path.exists() else None

    def push_client(self, agent: EmulatedAgent | FleetAgent, uefi_log: Path | None = None, replica: int = 0) -> PushClient:
        """The push protocol as the agent's agent.conf sets it up: its verifier URL (the certificate is
        verified as that URL's host, against the CA file agent.conf names), reached at the verifier's pod
        `replica` (where the Service's session affinity sends this agent; pod 0 is on the listen address), and
        the UEFI event log it offers (`uefi_log`, or the one its pod provides)."""
        _, port = self.verifier_address
        address = self.infra.replica_address(replica)
        return PushClient(
            tpm=agent.tpm,
            workdir=agent.workdir,
            uuid=agent.uuid,  # type: ignore[arg-type]  # an agent has its uuid once registered, before any push client
            verifier_url=self.agent_conf["verifier_url"],
            ca_file=self.agent_ca,
            connect_to=address,
            port=port,
            ak_handle=int(AK_HANDLE, 16),
            tpm_send=agent.send,
            uefi_log=uefi_log or self.agent_boot_log,
        )

    def run_declared(self, resource_name: str, action: str = "create", **overrides: str) -> subprocess.CompletedProcess:
        """Run a declared enrollment Command of this lab's program (see `run_enrollment`)."""
        declared = self.program.named(resource_name).plain
        return run_enrollment(self.kubectl_env, declared[action], declared["environment"], **overrides)

    @cached_property
    def kubectl_env(self) -> dict[str, str]:
        """The environment under which `kubectl` is the lab's stand-in (tools/lab/bin) for the infra cluster."""
        context = self.root / "kubectl.json"
        write_json(context, self.infra.kubectl_context())
        return {**os.environ, "PATH": f"{LAB / 'bin'}:{os.environ['PATH']}", "KEYLIME_LAB_KUBECTL": str(context)}
