"""An emulated push-model agent: the declared agent pod's software TPM, driven with tpm2-tools.

The rust `keylime_push_model_agent` cannot run here, so this plays its part against the real servers.
The TPM is the pod's own: the init container's command (components/scripts/swtpm-init.sh, from the
declared ConfigMap) creates its EK and EK certificate, and the sidecar's declared command serves it,
both as the pod's user, only moved to free ports. The agent's side is tpm2-tools:

    agent = EmulatedAgent(pod, workdir); agent.start()
    agent.create_identity()             # EK, and the AK from agent_data.json (or a new one, stored there)
    agent.register("http://127.0.0.1:8890")   # registration and activation at the registrar
    agent.restart(new_pod)              # the pod replaced on the same node: init, sidecar, agent again
    agent.stop()

As rust-keylime 0.2.9 does (keylime/src/context_info.rs), the agent keeps its AK in agent.conf's
`agent_data_path`, written and read as the agent container's user: a restarted agent loads that AK
when the file is valid for its EK, and makes (and stores) a new one otherwise.
Later steps of the push protocol (PoP session, quotes) build on `tpm()` and the loaded AK.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from components import boot_log

from .pod import Pod

# swtpm_setup (the init container) persists the EK it certified at 0x81010001. The agent creates its EK
# from the standard template and loads its AK, as keylime_push_model_agent does; the emulation keeps both
# at persistent handles of its own (swtpm has no resource manager, so transient objects cannot outlive a
# tpm2-tools call), and clears them whenever the agent process starts, as a process's transient objects go.
SETUP_EK_HANDLE = "0x81010001"
EK_HANDLE = "0x81010010"
AK_HANDLE = "0x81000010"
RSA_EK_CERT_INDEX = "0x1c00002"
TPM_TIMEOUT = 60
HTTP_TIMEOUT = 30
DEFAULT_AGENT_DATA = "agent_data.json"
AK_HASH_ALG, AK_SIGN_ALG = "sha256", "rsassa"


class RegistrationRefused(RuntimeError):  # noqa: N818 (the registrar's answer, as `except RegistrationRefused` reads)
    def __init__(self, step: str, status: int, answer: dict[str, Any]):
        self.status = status
        super().__init__(f"{step} answered {status}: {answer}")


def free_port_pair() -> int:
    """A port P with P and P + 1 free: the swtpm TCTI expects the control channel right after the TPM's."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _with_port(option: str, ports: dict[int, int]) -> str:
    """`type=tcp,port=2321,...` with its port moved as `ports` says."""
    return re.sub(r"(?<=port=)(\d+)", lambda match: str(ports[int(match.group(1))]), option)


class EmulatedAgent:
    def __init__(self, pod: Pod, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._use(pod)
        self.ports: dict[int, int] = {}
        self.process: subprocess.Popen | None = None
        self.log: Any = None
        self.init_output = ""
        self.last_init_output = ""
        self.uuid: str | None = None
        self.registered = False
        self.ek_cert: bytes | None = None

    def _use(self, pod: Pod) -> None:
        init_containers = pod.spec.get("initContainers", [])
        inits = [c for c in init_containers if c.get("restartPolicy") != "Always"]
        sidecars = [c for c in init_containers if c.get("restartPolicy") == "Always"]
        if len(inits) != 1 or len(sidecars) != 1:
            raise ValueError("expected one init container and one TPM sidecar in the agent pod")
        self.pod = pod
        self.init, self.sidecar = inits[0], sidecars[0]
        self.agent_container = pod.spec["containers"][0]

    # --- the pod's TPM --------------------------------------------------------------------------

    def _declared_ports(self) -> dict[str, int]:
        """The sidecar's declared --server and --ctrl ports."""
        command = self.sidecar["command"]
        found = {}
        for option in ("--server", "--ctrl"):
            value = command[command.index(option) + 1]
            # the option's value always carries port=, as the agent writes it
            found[option] = int(re.search(r"port=(\d+)", value).group(1))  # type: ignore[union-attr]
        return found

    def _env(self, container: str) -> dict[str, str]:
        """What the kubelet gives a container without a HOME of its own, plus its declared environment."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", **self.pod.env(container)}

    def start(self) -> None:
        """Run the init container to completion, then serve the TPM as the sidecar does."""
        name = self.init["name"]
        init = subprocess.run(
            self.pod.as_user(name, [self.pod.translate(name, arg) for arg in self.init["command"]]),
            env=self._env(name), capture_output=True, text=True, timeout=TPM_TIMEOUT, check=False,
        )
        if init.returncode != 0:
            raise RuntimeError(f"the init container failed:\n{init.stdout}{init.stderr}")
        # What the first run printed: a reboot finds the state initialised and says only that.
        self.last_init_output = init.stdout + init.stderr
        self.init_output = self.init_output or self.last_init_output
        declared = self._declared_ports()
        port = free_port_pair()
        self.ports = {declared["--server"]: port, declared["--ctrl"]: port + 1}
        name = self.sidecar["name"]
        command = [_with_port(arg, self.ports) if "port=" in arg else self.pod.translate(name, arg)
                   for arg in self.sidecar["command"]]
        # A TCTI in the sidecar's environment (to measure a boot into the TPM) follows the moved ports.
        env = {key: _with_port(value, self.ports) if "port=" in value else value for key, value in self._env(name).items()}
        self.log = (self.workdir / "swtpm.log").open("wb")
        self.process = subprocess.Popen(
            self.pod.as_user(name, command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        probe = [self.pod.translate(name, re.sub(r":(\d+)$", lambda m: f":{self.ports[int(m.group(1))]}", arg))
                 for arg in self.sidecar["startupProbe"]["exec"]["command"]]
        deadline = time.monotonic() + 15
        while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TPM sidecar did not come up: {(self.workdir / 'swtpm.log').read_text()}")
            time.sleep(0.05)

    @property
    def tcti(self) -> str:
        """The agent container's declared TCTI, pointed at where the sidecar now listens."""
        return _with_port(self.pod.declared_env(self.agent_container["name"])["TCTI"], self.ports)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def tpm(self, *argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run one tpm2-tools command in the work directory (or `cwd`), then flush transient objects (swtpm
        has no resource manager)."""
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        result = subprocess.run(list(argv), env=env, cwd=cwd or self.workdir, capture_output=True, text=True,
                                timeout=TPM_TIMEOUT, check=False)
        subprocess.run(["tpm2_flushcontext", "-t"], env=env, capture_output=True, timeout=TPM_TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def reboot(self) -> None:
        """Power-cycle the TPM: the sidecar restarts (startup-clear), PCRs are back to their power-on values,
        persisted keys stay. Shut down orderly first, as an OS does: an unorderly one counts against the
        TPM's dictionary-attack protection, and the AK's next use would hit TPM_RC_LOCKOUT."""
        self.tpm("tpm2_shutdown")
        self.stop()
        self.start()

    def restart(self, pod: Pod, keep_agent_data: bool = True) -> None:
        """The pod replaced by `pod` (a rollout, an upgrade, a deleted pod) on the same node: init container,
        TPM sidecar and agent process start again on whatever the new pod's volumes keep. Without
        `keep_agent_data` the agent's AK file is lost first, as it was on an emptyDir."""
        if self.process is not None:
            self.tpm("tpm2_shutdown")
        self.stop()
        self._use(pod)
        if not keep_agent_data:
            self.agent_data_path.unlink(missing_ok=True)
        self.registered = False
        self.start()
        self.create_identity()

    def send(self, command: bytes) -> bytes:
        """One raw TPM command through tpm2_send; the response as bytes."""
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        result = subprocess.run(["tpm2_send"], input=command, env=env, capture_output=True, timeout=TPM_TIMEOUT, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"tpm2_send failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def extend_pcr(self, pcr: int, digest: str) -> None:
        """What a measured component would do: extend one sha256 PCR."""
        self.tpm("tpm2_pcrextend", f"{pcr}:sha256={digest}")

    def measure_boot(self, log: bytes) -> None:
        """What the firmware of a boot that wrote `log` did: extend the PCRs with each of its events, in order."""
        self.tpm("tpm2_pcrextend", *[f"{pcr}:sha256={digest}" for pcr, digest in boot_log.extends(log)])

    def pcr(self, pcr: int) -> str:
        output = self.tpm("tpm2_pcrread", f"sha256:{pcr}").stdout
        # tpm2 prints the digest; an AttributeError here means it did not
        return re.search(r"0x([0-9A-Fa-f]{64})", output).group(1).lower()  # type: ignore[union-attr]

    # --- identity and registration --------------------------------------------------------------

    @property
    def agent_data_path(self) -> Path:
        """agent.conf's agent_data_path (rust-keylime's default: agent_data.json in keylime_dir), on this machine."""
        name = self.agent_container["name"]
        conf = tomllib.loads(Path(self.pod.env(name)["KEYLIME_AGENT_CONFIG"]).read_text())["agent"]
        declared = conf.get("agent_data_path", "default")
        if declared == "default":
            declared = f"{conf['keylime_dir']}/{DEFAULT_AGENT_DATA}"
        return self.pod.path(name, declared)

    def _as_agent(self, argv: list[str], data: bytes | None = None) -> bytes:
        """Run `argv` as the agent container's user: its files are only what that user can read and write."""
        result = subprocess.run(self.pod.as_user(self.agent_container["name"], argv), input=data, capture_output=True,
                                timeout=TPM_TIMEOUT, check=False)
        if result.returncode != 0:
            raise PermissionError(f"the agent's user cannot {' '.join(argv)}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def _stored_ak(self, ek_hash: str) -> dict[str, Any] | None:
        """The AK agent_data.json holds, if it was made for this EK and these algorithms (AgentData::valid)."""
        if not self.agent_data_path.exists():
            return None
        data = json.loads(self._as_agent(["cat", str(self.agent_data_path)]))
        valid = (data["ak_hash_alg"], data["ak_sign_alg"], bytes(data["ek_hash"])) == (AK_HASH_ALG, AK_SIGN_ALG, ek_hash.encode())
        return data if valid else None

    def _clear_handle(self, handle: str) -> None:
        if self.tpm("tpm2_readpublic", "-c", handle, check=False).returncode == 0:
            self.tpm("tpm2_evictcontrol", "-C", "o", "-c", handle)

    def create_identity(self) -> str:
        """What the agent does when it starts: the EK from the standard template (its SHA-256 is the hash_ek
        UUID), then the AK (RSA, sha256/rsassa: the only kind the verifier's proof of possession accepts)
        loaded from agent_data.json, or created and stored there."""
        for handle in (AK_HANDLE, EK_HANDLE):
            self._clear_handle(handle)
        self.tpm("tpm2_createek", "-c", EK_HANDLE, "-G", "rsa", "-u", "ek.pub")
        self.tpm("tpm2_readpublic", "-c", EK_HANDLE, "-o", "ek.pem", "-f", "pem")
        self.tpm("tpm2_readpublic", "-c", SETUP_EK_HANDLE, "-o", "certified-ek.pem", "-f", "pem")
        uuid = hashlib.sha256((self.workdir / "ek.pem").read_bytes()).hexdigest()
        stored = self._stored_ak(uuid)
        if stored is None:
            self.tpm("tpm2_createak", "-C", EK_HANDLE, "-c", "ak.ctx", "-G", "rsa", "-g", AK_HASH_ALG, "-s", AK_SIGN_ALG,
                     "-u", "ak.pub", "-r", "ak.priv")
            stored = {
                "ak_hash_alg": AK_HASH_ALG,
                "ak_sign_alg": AK_SIGN_ALG,
                "ak_public": list((self.workdir / "ak.pub").read_bytes()),
                "ak_private": list((self.workdir / "ak.priv").read_bytes()),
                "ek_hash": list(uuid.encode()),
            }
            self._as_agent(["tee", str(self.agent_data_path)], json.dumps(stored, indent=2).encode())
        (self.workdir / "ak.pub").write_bytes(bytes(stored["ak_public"]))
        (self.workdir / "ak.priv").write_bytes(bytes(stored["ak_private"]))
        # Loading under the EK needs the endorsement hierarchy's authorisation through a policy session.
        self.tpm("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
        self.tpm("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
        self.tpm("tpm2_load", "-C", EK_HANDLE, "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx", "-n", "ak.name",
                 "-P", "session:session.ctx")
        self.tpm("tpm2_flushcontext", "session.ctx", check=False)
        self.tpm("tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", AK_HANDLE)
        ek_cert = self.tpm("tpm2_nvread", RSA_EK_CERT_INDEX, "-o", "ekcert.der", check=False)
        self.ek_cert = (self.workdir / "ekcert.der").read_bytes() if ek_cert.returncode == 0 else None
        self.uuid = uuid
        return uuid

    def file_b64(self, name: str) -> str:
        return base64.b64encode((self.workdir / name).read_bytes()).decode()

    @staticmethod
    def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def register(self, registrar: str, contact_ip: str | None = None, uuid: str | None = None) -> None:
        """Register at `registrar` (http://host:port) and prove the AK sits beside the EK (activation).
        `contact_ip` is what the push agent sends from its contact_ip setting (KEYLIME_AGENT_CONTACT_IP).

        With `uuid`, registers that agent ID instead of the hash_ek one: another agent on the same EK and AK
        (the registrar accepts that), as tools/lab/fleet.py does to run many agents on few TPMs."""
        status, version = self.http("GET", f"{registrar}/version")
        if status != 200:
            raise RuntimeError(f"GET /version answered {status}: {version}")
        agent_id = uuid or self.uuid
        base = f"{registrar}/v{version['results']['current_version']}/agents/{agent_id}"
        body = {
            "ek_tpm": self.file_b64("ek.pub"),
            "ekcert": base64.b64encode(self.ek_cert).decode() if self.ek_cert else None,
            "aik_tpm": self.file_b64("ak.pub"),
            **({"ip": contact_ip} if contact_ip else {}),
        }
        status, answer = self.http("POST", base, body)
        if status != 200:
            raise RegistrationRefused("registration", status, answer)
        (self.workdir / "credential.blob").write_bytes(base64.b64decode(answer["results"]["blob"]))
        # ActivateCredential needs the endorsement hierarchy's authorisation through a policy session.
        self.tpm("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
        self.tpm("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
        self.tpm("tpm2_activatecredential", "-c", AK_HANDLE, "-C", EK_HANDLE, "-i", "credential.blob",
                 "-o", "credential.secret", "-P", "session:session.ctx")
        self.tpm("tpm2_flushcontext", "session.ctx", check=False)
        secret = (self.workdir / "credential.secret").read_bytes()
        # agent_id is known once the agent is registered, before activation
        auth_tag = hmac.new(base64.b64encode(secret), agent_id.encode(), hashlib.sha384).hexdigest()  # type: ignore[union-attr]
        status, answer = self.http("PUT", base, {"auth_tag": auth_tag})
        if status != 200:
            raise RegistrationRefused("activation", status, answer)
        self.registered = self.registered or agent_id == self.uuid
