"""hwtpm's EK trust store: the swtpm local CA that signs libvirt's vTPM EK certificates, read by
components/scripts/swtpm-localca-issuer.sh. swtpm_setup runs for real here (as root, as libvirt's swtpm user
would, with the arguments libvirt gives it) against a local CA whose state lives in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_swtpm import AGENT_UID, as_agent, ek_certificate

from controller.ek import TrustStore
from tools.lab.staging import reachable_temp_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "components" / "scripts" / "swtpm-localca-issuer.sh"


def configure_localca(folder: Path) -> Path:
    """swtpm_setup.conf and swtpm-localca.conf as Debian ships them, with the CA's state in `folder`/localca."""
    localca = folder / "localca"
    localca.mkdir(parents=True)
    (folder / "swtpm-localca.conf").write_text(
        f"statedir = {localca}\nsigningkey = {localca}/signkey.pem\n"
        f"issuercert = {localca}/issuercert.pem\ncertserial = {localca}/certserial\n"
    )
    (folder / "swtpm-localca.options").write_text("--platform-manufacturer keylime-push\n--platform-version 2.1\n"
                                                  "--platform-model QEMU\n")
    (folder / "swtpm_setup.conf").write_text(
        "# Program invoked for creating certificates\n"
        f"create_certs_tool= {shutil.which('swtpm_localca')}\n"
        f"create_certs_tool_config = {folder}/swtpm-localca.conf\n"
        f"create_certs_tool_options = {folder}/swtpm-localca.options\n"
    )
    return folder / "swtpm_setup.conf"


def libvirt_setup(setup_conf: Path, state: Path) -> None:
    """What libvirt's qemuTPMEmulatorRunSetup runs for a new TPM 2.0 (it passes no --config: the host's
    /etc/swtpm_setup.conf is replaced by `setup_conf` here)."""
    state.mkdir()
    result = subprocess.run(
        ["swtpm_setup", "--tpm2", "--tpm-state", str(state), "--vmid", "keylime-vtpm:00000000-0000-0000-0000-000000000001",
         "--logfile", str(state.parent / "swtpm-setup.log"), "--createek", "--create-ek-cert", "--create-platform-cert",
         "--lock-nvram", "--not-overwrite", "--config", str(setup_conf)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + (state.parent / "swtpm-setup.log").read_text()
    # ek_certificate() serves the state as the agent's user, as test_swtpm does.
    for path in (state, *state.iterdir()):
        os.chown(path, AGENT_UID, AGENT_UID)


def run_script(*args: str, user: bool = False, path: str | None = None, **env: str) -> subprocess.CompletedProcess:
    # Fed on stdin, as the declared Command feeds it (`bash -s`): the checkout may be unreadable to the agent's user.
    argv = ["/bin/bash", "-s", "--", *args]
    environment = {"PATH": path or os.environ["PATH"], "HOME": "/nonexistent", **env}
    if user:  # found on this PATH, not on the one the script gets
        argv = [shutil.which("setpriv"), *as_agent(argv)[1:]]  # type: ignore[list-item]
    return subprocess.run(argv, env=environment, input=SCRIPT.read_text(), capture_output=True, text=True, check=False)


@pytest.fixture
def host():
    folder = reachable_temp_dir("keylime-push-localca-")
    yield folder
    shutil.rmtree(folder)


def trust_store_of(pem: str, folder: Path) -> TrustStore:
    """The controller's EK trust store, as the Secret `keylime-attestation-controller-ek-trust` mounts it."""
    folder.mkdir()
    (folder / "tpm-manufacturer.pem").write_text(pem)
    return TrustStore.load(folder)


def test_the_vtpm_ek_certificate_chains_to_what_the_script_reads(host):
    setup_conf = configure_localca(host / "etc")
    libvirt_setup(setup_conf, host / "vm-1")
    result = run_script("system", SWTPM_SETUP_CONF=str(setup_conf))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (host / "etc" / "localca" / "issuercert.pem").read_text().rstrip("\n") + "\n"
    trust = trust_store_of(result.stdout, host / "trust")
    assert [c.subject.rfc4514_string() for c in trust.certificates] == ["CN=swtpm-localca"]
    assert trust.untrusted_reason(ek_certificate(host / "vm-1")) is None
    # The root swtpm_localca made beside it signed only the issuer: trusting the root alone trusts no EK.
    root_only = trust_store_of((host / "etc" / "localca" / "swtpm-localca-rootca-cert.pem").read_text(), host / "root")
    assert "not signed by a CA in the EK trust store" in str(root_only.untrusted_reason(ek_certificate(host / "vm-1")))
    # A vTPM certified by another host's local CA is not trusted.
    other_conf = configure_localca(host / "other-host")
    libvirt_setup(other_conf, host / "vm-2")
    assert trust.untrusted_reason(ek_certificate(host / "vm-2")) is not None


def test_the_command_the_hwtpm_stack_declares_prints_the_issuer_of_the_vtpm_s_ek(host, run):
    reader = run("hwtpm").named("vm-ek-issuer").plain
    setup_conf = configure_localca(host / "etc")
    libvirt_setup(setup_conf, host / "vm-1")
    result = subprocess.run(reader["create"], shell=True, input=reader["stdin"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "SWTPM_SETUP_CONF": str(setup_conf)}, check=False)
    assert result.returncode == 0, result.stderr
    assert trust_store_of(result.stdout, host / "trust").untrusted_reason(ek_certificate(host / "vm-1")) is None


def test_a_session_connection_reads_the_users_own_swtpm_setup_conf_first(host):
    configure_localca(host / "config")
    (host / "config" / "localca" / "issuercert.pem").write_text("-----BEGIN CERTIFICATE-----\nU0VTU0lPTg==\n"
                                                                 "-----END CERTIFICATE-----\n")
    result = run_script("session", XDG_CONFIG_HOME=str(host / "config"))
    assert result.returncode == 0, result.stderr
    assert "U0VTU0lPTg==" in result.stdout


def test_a_local_ca_this_user_cannot_read_is_read_with_sudo_or_named(host):
    setup_conf = configure_localca(host / "etc")
    libvirt_setup(setup_conf, host / "vm-1")
    issuer = host / "etc" / "localca" / "issuercert.pem"
    (host / "etc" / "localca").chmod(0o750)  # Debian's /var/lib/swtpm-localca: tss:root 0750
    bin_dir = host / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "sed", "tail", "id"):
        (bin_dir / tool).symlink_to(str(shutil.which(tool)))
    refused = run_script("system", user=True, path=str(bin_dir), SWTPM_SETUP_CONF=str(setup_conf))
    assert refused.returncode == 1 and f"cannot read {issuer}" in refused.stderr, refused.stderr
    assert refused.stdout == ""
    # A stateful sudo: it records what it is asked and, for `-n cat -- FILE`, gives what root would read there.
    shutil.copy(issuer, host / "as-root.pem")
    calls = host / "sudo-calls"
    (bin_dir / "sudo").write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\n'
        f'[[ "$1 $2 $3 $4" == "-n cat -- {issuer}" ]] && exec cat {host / "as-root.pem"}\nexit 1\n'
    )
    (bin_dir / "sudo").chmod(0o755)
    os.chown(host, AGENT_UID, AGENT_UID)  # the fake sudo's log
    read = run_script("system", user=True, path=str(bin_dir), SWTPM_SETUP_CONF=str(setup_conf))
    assert read.returncode == 0, read.stderr
    assert read.stdout == issuer.read_text().rstrip("\n") + "\n"
    assert calls.read_text() == f"-n cat -- {issuer}\n"


@pytest.mark.parametrize("setting,message", [
    ("create_certs_tool_config = ${XDG_CONFIG_HOME}/swtpm-localca.conf",
     "an environment variable of swtpm_setup's"),
    ("create_certs_tool_config = /nonexistent/swtpm-localca.conf", "cannot read /nonexistent/swtpm-localca.conf"),
])
def test_a_configuration_the_script_cannot_follow_fails_naming_it(host, setting, message):
    (host / "swtpm_setup.conf").write_text(f"create_certs_tool = /usr/bin/swtpm_localca\n{setting}\n")
    result = run_script("system", SWTPM_SETUP_CONF=str(host / "swtpm_setup.conf"))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_file_that_holds_no_certificate_is_refused(host):
    setup_conf = configure_localca(host / "etc")
    (host / "etc" / "localca" / "issuercert.pem").write_text("")
    result = run_script("system", SWTPM_SETUP_CONF=str(setup_conf))
    assert result.returncode == 1 and "holds no PEM certificate" in result.stderr


def test_usage():
    result = run_script("pull")
    assert result.returncode == 64 and "usage:" in result.stderr
