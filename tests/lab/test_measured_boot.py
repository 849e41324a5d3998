"""Measured boot in push mode, for real: the emulated agent offers and sends its UEFI event log as
keylime_push_model_agent 0.2.9 does, the real verifier replays it against the quote and judges it with
keylime's `example` policy against a reference state made by keylime's own `keylime-policy create
measured-boot`. The log is synthetic (components/boot_log.py) and the software TPM's PCRs are extended
with its events, as upstream's measured-boot-swtpm-sanity test does with a captured log.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components import boot_log
from tools import preflight
from tools.offline import run_program

from .steps import command, run_enroll, verifier_view

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("fresh")]

# keylime's config.MEASUREDBOOT_PCRS: what the verifier quotes once an agent has a measured-boot policy.
MEASURED_BOOT_PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def boots(lab) -> Path:
    """Event logs of a few boots, and the reference state keylime-policy makes from the good one."""
    directory = lab.root / "boots"
    directory.mkdir(exist_ok=True)
    logs = {
        "good": boot_log.synthetic_boot(),
        "secure-boot-off": boot_log.synthetic_boot(secure_boot=False),
        "another-kernel": boot_log.synthetic_boot(kernel="6.9.0-unreviewed"),
    }
    for name, events in logs.items():
        (directory / f"{name}.bin").write_bytes(boot_log.encode(events))
    result = subprocess.run(
        [str(lab.lab_bin / "keylime-policy"), "create", "measured-boot",
         "-e", str(directory / "good.bin"), "-o", str(directory / "refstate.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def enroll_with_boot_policy(kubectl_env, refstate: Path) -> dict:
    """The program's enrollment Command with a measured-boot policy and no PCR of its own."""
    program = run_program("swtpm", {})
    enrollment, verify = command(program, "enrollment-enroll"), command(program, "enrollment-verify")
    policies = {"TPM_POLICY": "{}", "MB_POLICY": refstate.read_text()}
    result = run_enroll(kubectl_env, enrollment["create"], enrollment["environment"], **policies)
    assert result.returncode == 0, result.stderr
    assert "and a measured-boot policy" in result.stderr
    # verify checks each agent is enrolled with the policies it is given
    return {**verify, "environment": {**verify["environment"], **policies}}


def verify(kubectl_env, verify_command: dict) -> subprocess.CompletedProcess:
    return run_enroll(kubectl_env, verify_command["create"], verify_command["environment"], WAIT_SECONDS="20")


def test_the_reference_state_is_keylimes_own_reading_of_the_synthetic_boot(boots):
    refstate = json.loads((boots / "refstate.json").read_text())
    assert refstate["has_secureboot"] is True
    (kernel,) = refstate["kernels"]
    assert kernel["kernel_cmdline"].startswith(r"/vmlinuz\-6\.8\.0\-keylime\-push")
    assert len(refstate["pk"]) == len(refstate["kek"]) == len(refstate["db"]) == len(refstate["dbx"]) == 1


def test_a_boot_log_that_replays_to_the_quoted_pcrs_and_meets_the_policy_passes(
    lab, kubectl_env, registered_agent, boots
):
    log = boots / "good.bin"
    registered_agent.measure_boot(log.read_bytes())
    assert registered_agent.pcr(7) == boot_log.replay(log.read_bytes())[7]
    verify_command = enroll_with_boot_policy(kubectl_env, boots / "refstate.json")
    outcomes = lab.push_client(registered_agent, uefi_log=log).attest_times(2)
    assert [o.selected_pcrs for o in outcomes] == [MEASURED_BOOT_PCRS] * 2
    result = verify(kubectl_env, verify_command)
    assert result.returncode == 0, result.stderr
    (summary,) = json.loads(result.stdout)["agents"]
    assert summary["attestation_status"] == "PASS" and summary["attestation_count"] >= 2
    assert "Compared PCRs 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in lab.infra.tail("verifier", 400)


def test_a_boot_with_secure_boot_off_fails_and_verify_gives_the_policys_reason(
    lab, kubectl_env, registered_agent, boots
):
    log = boots / "secure-boot-off.bin"
    registered_agent.measure_boot(log.read_bytes())  # the log is true to the TPM: only the policy can object
    verify_command = enroll_with_boot_policy(kubectl_env, boots / "refstate.json")
    lab.push_client(registered_agent, uefi_log=log).attest()
    result = verify(kubectl_env, verify_command)
    assert result.returncode == 1
    assert (f"agent {registered_agent.uuid}: attestation FAIL, policy_violation: measured-boot policy example: "
            in result.stderr), result.stderr
    assert "'UnicodeName': 'SecureBoot'" in result.stderr and "Enabled is not 'Yes'" in result.stderr
    assert "refstate" not in result.stderr


def test_a_log_that_does_not_replay_to_the_quoted_pcrs_fails_as_a_broken_evidence_chain(
    lab, kubectl_env, registered_agent, boots
):
    registered_agent.measure_boot((boots / "good.bin").read_bytes())
    verify_command = enroll_with_boot_policy(kubectl_env, boots / "refstate.json")
    # The TPM saw the good boot; the log the agent sends claims another kernel, which the policy would refuse
    # too: that the log is not the quoted boot is what keylime calls the failure, and so does verify.
    lab.push_client(registered_agent, uefi_log=boots / "another-kernel.bin").attest()
    result = verify(kubectl_env, verify_command)
    assert result.returncode == 1
    assert (f"agent {registered_agent.uuid}: attestation FAIL, broken_evidence_chain: the UEFI event log does not "
            f"replay to the quoted PCRs: For PCR ") in result.stderr, result.stderr
    quoted = {registered_agent.pcr(pcr) for pcr in (4, 8, 9)}
    assert any(f"but the agent {registered_agent.uuid} returned '{value}'" in result.stderr for value in quoted)


def test_a_reboot_into_another_boot_chain_is_judged_again(lab, kubectl_env, registered_agent, boots):
    registered_agent.measure_boot((boots / "good.bin").read_bytes())
    verify_command = enroll_with_boot_policy(kubectl_env, boots / "refstate.json")
    lab.push_client(registered_agent, uefi_log=boots / "good.bin").attest_times(1)
    assert verify(kubectl_env, verify_command).returncode == 0
    registered_agent.reboot()
    registered_agent.measure_boot((boots / "secure-boot-off.bin").read_bytes())
    lab.push_client(registered_agent, uefi_log=boots / "secure-boot-off.bin").attest_times(1)
    result = verify(kubectl_env, verify_command)
    assert result.returncode == 1 and "policy_violation: measured-boot policy example: " in result.stderr


def test_after_a_kernel_update_a_reference_state_made_from_the_new_boot_re_enrolls_through_update(
    lab, kubectl_env, registered_agent, boots
):
    new_boot = boots / "another-kernel.bin"
    registered_agent.measure_boot(new_boot.read_bytes())
    verify_command = enroll_with_boot_policy(kubectl_env, boots / "refstate.json")
    lab.push_client(registered_agent, uefi_log=new_boot).attest()
    assert "policy_violation: measured-boot policy example" in verify(kubectl_env, verify_command).stderr
    # The operator accepts the new kernel: a reference state made from its boot replaces the agent's policy.
    made = subprocess.run([str(lab.lab_bin / "keylime-policy"), "create", "measured-boot",
                           "-e", str(new_boot), "-o", str(boots / "refstate-new.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    enrollment = command(run_program("swtpm", {}), "enrollment-enroll")
    result = run_enroll(kubectl_env, enrollment["update"], enrollment["environment"],
                        TPM_POLICY="{}", MB_POLICY=(boots / "refstate-new.json").read_text())
    assert result.returncode == 0 and f"re-enrolling {registered_agent.uuid}" in result.stderr, result.stderr
    lab.push_client(registered_agent, uefi_log=new_boot).attest_times(1)
    passed = verify(kubectl_env, verify_command)
    assert passed.returncode == 0, passed.stderr


@pytest.fixture
def measured_stack(lab, registered_agent, synthetic_refstate):
    """Views of the swtpm stack with an mbPolicy (each with its own agent pod, as declared), and `make preflight`
    on them. enroll.py enrolls every registered agent, so the session's agent steps out of the registrar meanwhile."""
    views = []

    def view(event_log: bytes | None = None):
        measured = lab.with_overrides({"mbPolicy": synthetic_refstate, "tpmPolicy": "{}"}, new_agent_pod=True)
        measured.boot_log = event_log
        views.append(measured)
        return measured

    assert lab.infra.tenant("-c", "regdelete", "-u", registered_agent.uuid).returncode == 0
    yield view
    for agent in [measured.__dict__["agent"] for measured in views if "agent" in measured.__dict__]:
        if verifier_view(lab.infra, agent.uuid) is not None:
            lab.infra.tenant("-c", "delete", "-u", agent.uuid, "--push-model")
        if agent.registered:
            lab.infra.tenant("-c", "regdelete", "-u", agent.uuid)
    registered_agent.register(lab.registrar_url)


def test_the_swtpm_stack_with_an_mb_policy_attests_the_synthetic_boot_its_pod_declares(measured_stack):
    measured = measured_stack()
    agent = measured.agent
    log = boot_log.encode(boot_log.synthetic_boot())
    # The declared sidecar (swtpm-boot.sh) measured the boot; the agent reads the log its ConfigMap carries.
    assert {pcr: agent.pcr(pcr) for pcr in range(10)} == boot_log.replay(log)
    assert measured.agent_boot_log.read_bytes() == log
    agent.reboot()  # a restarted sidecar is a new boot, measured again, not on top of the last one
    assert agent.pcr(7) == boot_log.replay(log)[7]
    summary = preflight.preflight(measured)
    assert summary["attestation_status"] == "PASS" and summary["attestation_count"] >= 2


def test_preflight_with_another_machines_event_log_fails_against_the_synthetic_reference_state(measured_stack, capsys):
    # `make preflight EVENT_LOG=...`: the agent's TPM boots that log instead of its pod's.
    measured = measured_stack(boot_log.encode(boot_log.synthetic_boot(secure_boot=False)))
    with pytest.raises(preflight.Failed) as failed:
        preflight.preflight(measured)
    assert "policy_violation: measured-boot policy example: " in str(failed.value)
    assert "Enabled is not 'Yes'" in str(failed.value)
    assert "PCRs extended with the 27 events of your event log" in capsys.readouterr().out
