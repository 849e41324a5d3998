"""The agent pod's software TPM, for real: the init script and the sidecar command line, run with swtpm here."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import ROOT, pod_spec

from components.agent_workload import SWTPM_CTRL_PORT, SWTPM_PORT
from controller.ek import TrustStore
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


def run_init(state_dir, manufacturer_ca: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "SWTPM_STATE_DIR": str(state_dir), "HOME": str(state_dir)}
    if manufacturer_ca is not None:
        env["TPM_MANUFACTURER_CA_DIR"] = str(manufacturer_ca)
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


def manufacturer_ca(folder: Path) -> Path:
    """A CA as KeylimePki issues the "TPM manufacturer" (ECDSA P-256, self-signed, CA uses, a subject key id),
    readable as a mounted Secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keylime-push TPM manufacturer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir()
    (folder / "signkey.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "issuercert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path in (folder, *folder.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def ek_certificate(state_dir) -> bytes:
    """The RSA EK certificate the TPM holds, read over the sidecar's command line."""
    port = free_port_pair()
    server = subprocess.Popen(
        as_agent(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state_dir}", "--flags", "startup-clear",
                  "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                  "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        tcti = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=localhost,port={port}"}
        out = state_dir.parent / "ekcert.der"
        deadline = time.monotonic() + 10
        while subprocess.run(["tpm2_nvread", RSA_EK_CERT_INDEX, "-o", str(out)], env=tcti, capture_output=True,
                             check=False).returncode != 0:
            assert time.monotonic() < deadline, "the EK certificate could not be read"
            time.sleep(0.2)
        return out.read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_ek_is_signed_by_the_manufacturer_ca_when_one_is_given_and_only_then(state_dir):
    ca = manufacturer_ca(state_dir.parent / "manufacturer")
    trust_dir = state_dir.parent / "trust"
    trust_dir.mkdir()
    shutil.copy(ca / "issuercert.pem", trust_dir / "tpm-manufacturer.pem")
    trust = TrustStore.load(trust_dir)
    assert run_init(state_dir, ca).returncode == 0
    assert trust.untrusted_reason(ek_certificate(state_dir)) is None
    other = state_dir.parent / "other"
    other.mkdir()
    os.chown(other, AGENT_UID, AGENT_UID)
    assert run_init(other).returncode == 0
    assert trust.untrusted_reason(ek_certificate(other)) is not None
