"""The infra cluster's keylime registrar, verifier and tenant, run on this machine from the program's declarations.

Each server runs from its declared Deployment: its volumes (`pod.Pod`), its environment, its user and
groups, its config file from the declared ConfigMap. Only what cannot hold outside Kubernetes is
changed: file paths point into the lab (tls_dir, database_url, tpm_cert_store) and servers listen on a
loopback address (127.0.0.1 unless told otherwise). Host names the configs dial (the in-cluster service
names) are left as they are: each process runs in a private mount namespace whose /etc/hosts resolves them
to that address, whose /run is the lab's, and where the keylime virtualenv is mounted under the lab's root,
which the pods' users can reach (`staging`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .declared import Cluster
from .pod import Pod
from .push import PinnedHTTPSConnection
from .staging import stage_console_scripts

SERVERS = ("registrar", "verifier")
COMPONENTS = (*SERVERS, "tenant")
PROGRAMS = tuple(f"keylime_{component}" for component in COMPONENTS)
DEFAULT_LISTEN_ADDRESS = "127.0.0.1"
START_TIMEOUT = 60
STOP_TIMEOUT = 15
TENANT_TIMEOUT = 120
TENANT_BATCH = Path(__file__).with_name("tenant_batch.py")
TENANT_BATCH_RESULTS = "tenant_batch results:"
# The verifier API version keylime_tenant 7.14.3 settles on in push mode (it logs it).
TENANT_VERIFIER_API = "2.6"

# Stands in for the image's logging.conf: keylime's own log format, on stdout.
LOGGING_CONF = """\
[logging]
version = 2.6

[loggers]
keys = root,keylime

[handlers]
keys = console

[formatters]
keys = plain

[formatter_plain]
format = %(asctime)s.%(msecs)03d - %(name)s - %(levelname)s - %(message)s
datefmt = %Y-%m-%d %H:%M:%S

[handler_console]
class = StreamHandler
level = INFO
formatter = plain
args = (sys.stdout,)

[logger_root]
level = INFO
handlers = console

[logger_keylime]
level = INFO
qualname = keylime
handlers =
"""

# Runs argv with the lab's /etc/hosts and /run, and the virtualenv $3 mounted on $4, visible to it and its children only.
NAMESPACE_SCRIPT = 'set -e; mount --bind "$1" /etc/hosts; mount --bind "$2" /run; mount --bind "$3" "$4"; shift 4; exec "$@"'


def deployment(component: str) -> str:
    return f"keylime-{component}"


def rewrite_options(text: str, rewrite: dict[str, Callable[[str], str]]) -> str:
    """Replace the value of each option named in `rewrite` (each must occur); every other line stays byte for byte."""
    seen: set[str] = set()

    def replace(match: re.Match) -> str:
        key, value = match.group(1), match.group(2)
        if key not in rewrite:
            return match.group(0)
        seen.add(key)
        return f"{key} = {rewrite[key](value)}"

    result = re.sub(r"^(\w+) = ?(.*)$", replace, text, flags=re.MULTILINE)
    missing = set(rewrite) - seen
    if missing:
        raise ValueError(f"the declared config has no option {sorted(missing)}")
    return result


def options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+) = ?(.*)$", text, flags=re.MULTILINE))


def dialed_names(configs: list[str]) -> list[str]:
    """Host names (not addresses) that the configs tell keylime to dial: every `*_ip` option holding a name
    (`session_create_rate_limit_per_ip` and its like end in `_ip` too, but hold numbers)."""
    names = []
    for text in configs:
        for key, value in options(text).items():
            if key.endswith("_ip") and value and not value.isdigit():
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    names.append(value)
    return sorted(set(names))


def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class KeylimeInfra:
    """Registrar, verifier and tenant as the infra cluster declares them, under `root`."""

    def __init__(self, root: Path, lab_bin: Path, cluster: Cluster, secret_value: Callable[[str], str],
                 listen_address: str = DEFAULT_LISTEN_ADDRESS, database_url: str | None = None,
                 other_hosts: dict[str, str] | None = None):
        """`listen_address`: where the first pod of each server listens and the Services' names resolve
        (another loopback address lets a second set of servers run beside the first); further pods listen
        on the addresses after it. `database_url`: a real database for registrar and verifier (the lab's
        throwaway PostgreSQL) in place of the declared one; by default the declared sqlite file, on the
        pod's volume. `other_hosts`: names the servers resolve besides the Services' ({name: address}),
        such as a database's service name."""
        self.root, self.lab_bin, self.cluster = root, lab_bin, cluster
        self.listen_address = listen_address
        self.database_url = database_url
        self.option_overrides: dict[str, dict[str, str]] = {}
        self.pods: dict[str, Pod] = {}
        self.configs: dict[str, Path] = {}
        self.declared_configs: dict[str, str] = {}
        self.run_dirs: dict[str, Path] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        root.mkdir()
        self.mounted_venv = root / "venv-lab"
        self.mounted_venv.mkdir()
        self.scripts = root / "bin"
        stage_console_scripts(lab_bin, self.mounted_venv, PROGRAMS, self.scripts)
        self.logging_conf = root / "logging.conf"
        self.logging_conf.write_text(LOGGING_CONF)
        self.logging_conf.chmod(0o644)
        # keylime reads ca.conf only to run a CA of its own, which this deployment never does; an empty file
        # keeps the lab from picking up a /etc/keylime/ca.conf of this machine.
        self.ca_conf = root / "ca.conf"
        self.ca_conf.write_text("")
        self.ca_conf.chmod(0o644)
        for component in COMPONENTS:
            pod = Pod(root / component, cluster, cluster.pod_spec("Deployment", deployment(component)), secret_value)
            self.pods[component] = pod
            self.configs[component] = pod.path(component, pod.declared_env(component)[self._config_env_name(component)])
            # The image's /run, which keylime writes /run/keylime into (the pod mounts an emptyDir there).
            run = root / component / "image" / "run"
            run.mkdir(parents=True)
            uid, gid, _ = pod.user(component)
            os.chown(run, uid, gid)
            self.run_dirs[component] = run
        for component in COMPONENTS:
            self._rewrite_config(component)
        self.hosts = root / "hosts"
        names = dialed_names(list(self.declared_configs.values()))
        others = "".join(f"{address} {name}\n" for name, address in sorted((other_hosts or {}).items()))
        self.hosts.write_text(f"127.0.0.1 localhost\n{listen_address} {' '.join(names)}\n{others}::1 localhost\n")
        self.hosts.chmod(0o644)

    def _config_env_name(self, component: str) -> str:
        return f"KEYLIME_{component.upper()}_CONFIG"

    def _rewrite_config(self, component: str) -> None:
        pod = self.pods[component]
        config = self.configs[component]
        text = config.read_text()
        self.declared_configs[component] = text
        present = options(text)
        image_dir = self.root / component / "image"

        def on_volume(path: str) -> str:
            return str(pod.path(component, path))

        def in_image(path: str) -> str:
            # Not on a volume: in the pod it is the image's own (empty here) directory.
            local = image_dir / path.lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            return str(local)

        def database(url: str) -> str:
            if self.database_url is not None:
                return self.database_url
            prefix = "sqlite:///"
            if not url.startswith(prefix):
                raise ValueError(f"{component}: the config says {url}; give the lab a database_url to run it on")
            return prefix + on_volume(url[len(prefix):])

        rewrite: dict[str, Callable[[str], str]] = {"tls_dir": on_volume}
        if "ip" in present:
            rewrite["ip"] = lambda _: self.listen_address
        if "database_url" in present:
            rewrite["database_url"] = database
        if "tpm_cert_store" in present:
            rewrite["tpm_cert_store"] = in_image
        text = rewrite_options(text, rewrite)
        stray = {key: value for key, value in options(text).items() if value.startswith("/") and key not in rewrite}
        if stray:
            raise ValueError(f"{component}: options with container paths the lab does not map: {stray}")
        config.write_text(text)

    def env(self, component: str) -> dict[str, str]:
        pod = self.pods[component]
        return {
            "PATH": f"{self.scripts}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/",
            "TMPDIR": str(pod.path(component, "/tmp")),
            **pod.env(component),
            "KEYLIME_LOGGING_CONFIG": str(self.logging_conf),
            "KEYLIME_CA_CONFIG": str(self.ca_conf),
            **self.option_overrides.get(component, {}),
        }

    def exec_spec(self, component: str, run: Path | None = None) -> dict[str, Any]:
        """How to run a command in the component's container (its pod's /run by default): argv prefix,
        environment, working directory."""
        pod = self.pods[component]
        prefix = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", NAMESPACE_SCRIPT, "lab-pod",
                  str(self.hosts), str(run or self.run_dirs[component]), str(self.lab_bin.parent), str(self.mounted_venv)]
        env = self.env(component)
        return {"argv": [*prefix, *pod.as_user(component, [])], "env": env, "cwd": env["KEYLIME_DIR"]}

    def option(self, component: str, key: str) -> str:
        """An option of the config file the component runs with (paths already pointing into the lab)."""
        return options(self.configs[component].read_text())[key]

    def declared_option(self, component: str, key: str) -> str:
        return options(self.declared_configs[component])[key]

    def port(self, component: str, name: str) -> int:
        """A container port the Deployment declares, by name."""
        ports = self.pods[component].container(component).get("ports", [])
        return next(port["containerPort"] for port in ports if port["name"] == name)

    def log(self, name: str) -> Path:
        """A server's output: `registrar`, `verifier` or a replica's name."""
        return self.root / f"{name}.log"

    # --- servers --------------------------------------------------------------------------------

    def ports(self, component: str) -> list[int]:
        return [port["containerPort"] for port in self.pods[component].container(component).get("ports", [])]

    def start(self, option_overrides: dict[str, dict[str, object]] | None = None) -> None:
        """One registrar and one verifier, as the declared Deployments' first pods; `option_overrides`
        ({component: {option: value}}) reach keylime, in these and in every further pod, as
        KEYLIME_<COMPONENT>_<OPTION> variables, which take precedence over its config file."""
        self.option_overrides = {
            component: {f"KEYLIME_{component.upper()}_{option.upper()}": str(value) for option, value in options.items()}
            for component, options in (option_overrides or {}).items()
        }
        for component in SERVERS:
            self._check_free(self.listen_address, component)
        for component in SERVERS:
            self.processes[component] = self._spawn(component, component, self.listen_address, self.run_dirs[component])
        for component in SERVERS:
            self._wait_ready(component, self.listen_address)

    def start_replica(self, component: str, replica: int, env: dict[str, str] | None = None,
                      cpus: str | None = None) -> str:
        """Another pod of a server's Deployment: same config and database, its own address (the lab's address
        + replica, as a pod has its own IP), its own /run (keylime's shared memory is per pod). `env` overrides options
        as keylime reads them (KEYLIME_VERIFIER_MAX_WORKERS=1 ...); `cpus` pins it (taskset's list form).
        Returns its name, `<component>-<replica>`."""
        name = self.spawn_replica(component, replica, env, cpus)
        self._wait_ready(name, self.replica_address(replica), component)
        return name

    def spawn_replica(self, component: str, replica: int, env: dict[str, str] | None = None, cpus: str | None = None) -> str:
        """`start_replica` without waiting for it to listen (pods of a Deployment start together)."""
        name, address = f"{component}-{replica}", self.replica_address(replica)
        self._check_free(address, component)
        run = self.root / component / f"image-run-{replica}"
        shutil.rmtree(run, ignore_errors=True)  # a new pod: a new emptyDir at /run
        run.mkdir()
        uid, gid, _ = self.pods[component].user(component)
        os.chown(run, uid, gid)
        listen = {f"KEYLIME_{component.upper()}_IP": address, **(env or {})}
        self.processes[name] = self._spawn(name, component, address, run, listen, cpus)
        return name

    def listening(self, name: str, address: str, component: str) -> bool:
        """Whether the server accepts connections on every port its Deployment declares."""
        for port in self.ports(component):
            try:
                socket.create_connection((address, port), timeout=1).close()
            except OSError:
                return False
        return True

    def replica_address(self, replica: int) -> str:
        return str(ipaddress.IPv4Address(self.listen_address) + replica)

    def _check_free(self, address: str, component: str) -> None:
        # Readiness is a TCP connect: a port some other process holds would look ready.
        for port in self.ports(component):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
                try:
                    probe.bind((address, port))
                except OSError as error:
                    raise RuntimeError(
                        f"{address}:{port}, which keylime_{component} listens on, is taken "
                        f"by another process ({error}); stop it and rerun"
                    ) from None

    def _spawn(
        self, name: str, component: str, address: str, run: Path, env: dict[str, str] | None = None, cpus: str | None = None
    ) -> subprocess.Popen:
        spec = self.exec_spec(component, run)
        pin = ["taskset", "--cpu-list", cpus] if cpus else []
        with self.log(name).open("wb") as log:
            return subprocess.Popen(
                [*pin, *spec["argv"], f"keylime_{component}"],
                env={**spec["env"], **(env or {})},
                cwd=spec["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the parent ignores SIGTERM, the group does not
            )

    def _wait_ready(self, name: str, address: str, component: str | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports(component or name):
            while True:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"keylime {name} exited:\n{self.tail(name)}")
                try:
                    socket.create_connection((address, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"keylime {name} not listening on {address}:{port}:\n{self.tail(name)}") from None
                    time.sleep(0.1)

    def tail(self, name: str, lines: int = 40) -> str:
        log = self.log(name)
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def kill(self, name: str) -> None:
        """A pod lost at once (node failure, OOM kill): SIGKILL to every process of the server, no shutdown."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        while processes_in_group(process.pid):
            time.sleep(0.1)
        process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> list[str]:
        """Stop every server's whole process group; returns what had to be killed."""
        killed = []
        for name, process in self.processes.items():
            pgid = process.pid
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + STOP_TIMEOUT
            while processes_in_group(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if processes_in_group(pgid):
                killed.append(name)
                os.killpg(pgid, signal.SIGKILL)
                while processes_in_group(pgid):
                    time.sleep(0.1)
            process.wait(timeout=STOP_TIMEOUT)
        self.processes.clear()
        return killed

    # --- tenant ---------------------------------------------------------------------------------

    def tenant(self, *args: str) -> subprocess.CompletedProcess:
        spec = self.exec_spec("tenant")
        return subprocess.run(
            [*spec["argv"], "keylime_tenant", *args],
            env=spec["env"],
            cwd=spec["cwd"],
            capture_output=True,
            text=True,
            timeout=TENANT_TIMEOUT,
            check=False,
        )

    def tenant_batch(self, commands: list[list[str]], timeout: float = TENANT_TIMEOUT) -> tuple[list[int], str]:
        """Many keylime_tenant command lines in one tenant process (tenant_batch.py): each one's exit
        status, and the process's whole output."""
        spec = self.exec_spec("tenant")
        ca, _, _ = self.client_tls_files("tenant")
        result = subprocess.run(
            # The keylime virtualenv's interpreter where the tenant's namespace mounts it (`staging`).
            [*spec["argv"], str(self.mounted_venv / "bin" / "python"), "-c", TENANT_BATCH.read_text(), TENANT_BATCH_RESULTS],
            input=json.dumps(commands),
            # requests would load certifi's bundle into the tenant's TLS context on every connection (30 ms
            # of CPU each, five connections an agent); the context holds the tenant's CA already.
            env={**spec["env"], "REQUESTS_CA_BUNDLE": str(ca)},
            cwd=spec["cwd"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = result.stdout + result.stderr
        marker = result.stdout.rfind(TENANT_BATCH_RESULTS)
        if result.returncode != 0 or marker < 0:
            raise RuntimeError(f"tenant_batch.py failed ({result.returncode}):\n{output[-4000:]}")
        return json.loads(result.stdout[marker + len(TENANT_BATCH_RESULTS) :]), output

    def client_tls_files(self, component: str) -> tuple[Path, Path, Path]:
        """(CA, client certificate, client key) the component's config makes it use as a TLS client."""
        tls_dir = Path(self.option(component, "tls_dir"))
        ca = json.loads(self.option(component, "trusted_server_ca"))[0]
        return tls_dir / ca, tls_dir / self.option(component, "client_cert"), tls_dir / self.option(component, "client_key")

    def verifier_agents(self) -> dict[str, dict[str, Any]]:
        """Every agent the verifier holds, with its attestation status and count: what `keylime_tenant -c
        bulkinfo` asks for and prints, asked as the tenant does (its client certificate, the verifier
        verified under the name tenant.conf dials) without the tenant's start-up."""
        ca, cert, key = self.client_tls_files("tenant")
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        port = int(self.option("tenant", "verifier_port"))
        connection = PinnedHTTPSConnection(self.option("tenant", "verifier_ip"), port, self.listen_address, context)
        try:
            connection.request("GET", f"/v{TENANT_VERIFIER_API}/agents/?bulk=True&verifier=")
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET /agents/?bulk=True answered {response.status}: {answer}")
        return answer["results"]

    def kubectl_context(self) -> dict[str, Any]:
        """What tests/lab/bin/kubectl needs to stand in for the infra cluster's API server."""
        return {
            "namespace": self.cluster.get("Deployment", deployment("tenant"))["metadata"]["namespace"],
            "exec": {f"deploy/{deployment('tenant')}": {"tenant": self.exec_spec("tenant")}},
            "logs": {f"app.kubernetes.io/name={deployment('verifier')}": str(self.log("verifier"))},
        }


def write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=1))
