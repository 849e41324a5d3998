"""An emulated push-model agent: the declared agent pod's software TPM, driven with tpm2-tools.

The rust `keylime_push_model_agent` cannot run here, so this plays its part against the real servers.
The TPM is the pod's own: the init container's command (components/scripts/swtpm-init.sh, from the
declared ConfigMap) creates its EK and EK certificate, and the sidecar's declared command serves it,
both as the pod's user, only moved to free ports. The agent's side is tpm2-tools:

    agent = EmulatedAgent(pod, workdir); agent.start()
    agent.create_identity()             # EK and AK, persisted; agent.uuid is the hash_ek UUID
    agent.register("http://127.0.0.1:8890")   # registration and activation at the registrar
    agent.stop()

Later steps of the push protocol (PoP session, quotes) build on `tpm()` and the persisted AK.
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from components import boot_log

from .pod import Pod

# swtpm_setup (the init container) persists the EK it certified at 0x81010001. The agent creates its EK
# from the standard template, as keylime_push_model_agent does; the emulation persists it beside that one
# (swtpm has no resource manager, so transient objects cannot outlive a tpm2-tools call).
SETUP_EK_HANDLE = "0x81010001"
EK_HANDLE = "0x81010010"
AK_HANDLE = "0x81000010"
RSA_EK_CERT_INDEX = "0x1c00002"
TPM_TIMEOUT = 60
HTTP_TIMEOUT = 30


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
        self.pod = pod
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        init_containers = pod.spec.get("initContainers", [])
        inits = [c for c in init_containers if c.get("restartPolicy") != "Always"]
        sidecars = [c for c in init_containers if c.get("restartPolicy") == "Always"]
        if len(inits) != 1 or len(sidecars) != 1:
            raise ValueError("expected one init container and one TPM sidecar in the agent pod")
        self.init, self.sidecar = inits[0], sidecars[0]
        self.agent_container = pod.spec["containers"][0]
        self.ports: dict[int, int] = {}
        self.process: subprocess.Popen | None = None
        self.log: Any = None
        self.init_output = ""
        self.uuid: str | None = None
        self.registered = False
        self.ek_cert: bytes | None = None

    # --- the pod's TPM --------------------------------------------------------------------------

    def _declared_ports(self) -> dict[str, int]:
        """The sidecar's declared --server and --ctrl ports."""
        command = self.sidecar["command"]
        found = {}
        for option in ("--server", "--ctrl"):
            value = command[command.index(option) + 1]
            found[option] = int(re.search(r"port=(\d+)", value).group(1))
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
        self.init_output = self.init_output or init.stdout + init.stderr
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

    def tpm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one tpm2-tools command in the work directory, then flush transient objects (swtpm has no resource manager)."""
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        result = subprocess.run(list(argv), env=env, cwd=self.workdir, capture_output=True, text=True,
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
        return re.search(r"0x([0-9A-Fa-f]{64})", output).group(1).lower()

    # --- identity and registration --------------------------------------------------------------

    def create_identity(self) -> str:
        """EK and AK (RSA, sha256/rsassa: the only kind the verifier's proof of possession accepts), persisted."""
        self.tpm("tpm2_createek", "-c", EK_HANDLE, "-G", "rsa", "-u", "ek.pub")
        self.tpm("tpm2_readpublic", "-c", EK_HANDLE, "-o", "ek.pem", "-f", "pem")
        self.tpm("tpm2_readpublic", "-c", SETUP_EK_HANDLE, "-o", "certified-ek.pem", "-f", "pem")
        self.tpm("tpm2_createak", "-C", EK_HANDLE, "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa",
                 "-u", "ak.pub", "-n", "ak.name")
        self.tpm("tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", AK_HANDLE)
        ek_cert = self.tpm("tpm2_nvread", RSA_EK_CERT_INDEX, "-o", "ekcert.der", check=False)
        self.ek_cert = (self.workdir / "ekcert.der").read_bytes() if ek_cert.returncode == 0 else None
        # uuid = "hash_ek": SHA-256 of the EK's public key as a PEM SubjectPublicKeyInfo.
        self.uuid = hashlib.sha256((self.workdir / "ek.pem").read_bytes()).hexdigest()
        return self.uuid

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

    def register(self, registrar: str, contact_ip: str | None = None) -> None:
        """Register at `registrar` (http://host:port) and prove the AK sits beside the EK (activation).
        `contact_ip` is what the push agent sends from its contact_ip setting (KEYLIME_AGENT_CONTACT_IP)."""
        status, version = self.http("GET", f"{registrar}/version")
        if status != 200:
            raise RuntimeError(f"GET /version answered {status}: {version}")
        base = f"{registrar}/v{version['results']['current_version']}/agents/{self.uuid}"
        body = {
            "ek_tpm": self.file_b64("ek.pub"),
            "ekcert": base64.b64encode(self.ek_cert).decode() if self.ek_cert else None,
            "aik_tpm": self.file_b64("ak.pub"),
            **({"ip": contact_ip} if contact_ip else {}),
        }
        status, answer = self.http("POST", base, body)
        if status != 200:
            raise RuntimeError(f"registration answered {status}: {answer}")
        (self.workdir / "credential.blob").write_bytes(base64.b64decode(answer["results"]["blob"]))
        # ActivateCredential needs the endorsement hierarchy's authorisation through a policy session.
        self.tpm("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
        self.tpm("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
        self.tpm("tpm2_activatecredential", "-c", AK_HANDLE, "-C", EK_HANDLE, "-i", "credential.blob",
                 "-o", "credential.secret", "-P", "session:session.ctx")
        self.tpm("tpm2_flushcontext", "session.ctx", check=False)
        secret = (self.workdir / "credential.secret").read_bytes()
        auth_tag = hmac.new(base64.b64encode(secret), self.uuid.encode(), hashlib.sha384).hexdigest()
        status, answer = self.http("PUT", base, {"auth_tag": auth_tag})
        if status != 200:
            raise RuntimeError(f"activation answered {status}: {answer}")
        self.registered = True
