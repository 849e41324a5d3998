"""mbPolicy as declared: its validation, the enrollment, the agent's event log in both stacks, the UEFI VM.
What keylime does with all of it is proven in tests/lab/test_measured_boot.py and test_boot_log_reader.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tomllib

import pytest
from helpers import (
    MEASURED,
    REFSTATE,
    ROOT,
    all_containers,
    env_of,
    kube_objects,
    pod_spec,
    problems_for,
    settings_for,
)

from components import agent_workload, boot_log, keylime_conf
from components.settings import NAMESPACE
from tools.offline import run_program

ZEROS = "0" * 64


# --- the config contract ---------------------------------------------------------------------------

def test_a_reference_state_is_kept_as_compact_json_with_sorted_keys():
    settings = settings_for(**MEASURED)
    assert json.loads(settings.mb_policy) == REFSTATE
    assert settings.mb_policy == json.dumps(REFSTATE, sort_keys=True, separators=(",", ":"))
    assert settings_for().mb_policy == ""  # the default: PCR policy only


@pytest.mark.parametrize(
    ("refstate", "explains"),
    [
        ("{not json", "malformed JSON"),
        ("[]", "need a JSON object"),
        # What keylime-policy writes, with exit status 0, for a log without the boot applications it expects.
        (json.dumps({key: value for key, value in REFSTATE.items() if key != "kernels"}), "no kernels"),
        (json.dumps({**REFSTATE, "has_secureboot": "yes"}), "has_secureboot must be true or false"),
        (json.dumps({**REFSTATE, "dbx": None}), "dbx must be a list"),
        (json.dumps({**REFSTATE, "kernels": [{"kernel_cmdline": "x"}]}), "kernels[0] lacks shim_authcode_sha256"),
        (json.dumps({**REFSTATE, "has_secureboot": False}), "kernels[0] lacks vmlinuz_plain_sha256"),
    ],
)
def test_a_bad_reference_state_is_refused_naming_the_key_and_what_is_allowed(refstate, explains):
    (problem,) = problems_for(mbPolicy=refstate, tpmPolicy="{}")
    assert problem.startswith(f"{NAMESPACE}:mbPolicy: got ")
    assert "allowed: empty (no measured boot), or a reference state as `keylime-policy create measured-boot`" in problem
    assert explains in problem


def test_a_long_reference_state_is_quoted_by_its_start_only():
    refstate = json.dumps({**REFSTATE, "kernels": [], "dbx": ["0x" + "ab" * 32] * 200})
    (problem,) = problems_for(mbPolicy=refstate, tpmPolicy="{}")
    assert f"({len(refstate)} characters)" in problem and len(problem) < 800


def test_next_to_an_mb_policy_the_tpm_policy_may_not_name_the_pcrs_the_boot_log_accounts_for():
    # keylime_tenant exits on these (cli/policies.py enforce_pcrs over MEASUREDBOOT_PCRS), not only on PCR 15.
    assert problems_for(mbPolicy=json.dumps(REFSTATE)) == [  # the default tpmPolicy names PCR 8
        f'{NAMESPACE}:tpmPolicy: got \'{{"8": ["{ZEROS}"]}}\'; allowed: {{}} or PCRs 17..23 next to an mbPolicy '
        "(keylime_tenant refuses PCR 8: the boot log accounts for PCRs 0-9 and 11-15)"
    ]
    (problem,) = problems_for(mbPolicy=json.dumps(REFSTATE), tpmPolicy=json.dumps({"15": ZEROS, "0": ZEROS, "23": ZEROS}))
    assert "refuses PCR 0, 15:" in problem
    assert settings_for(mbPolicy=json.dumps(REFSTATE), tpmPolicy=json.dumps({"23": ZEROS})).tpm_policy_json == (
        json.dumps({"23": ZEROS}, separators=(",", ":"))
    )


def test_an_empty_tpm_policy_needs_an_mb_policy():
    (problem,) = problems_for(tpmPolicy="{}")
    assert problem.startswith(f"{NAMESPACE}:tpmPolicy: got '{{}}'; allowed: at least one PCR when there is no mbPolicy")


def test_mb_policy_problems_are_reported_with_the_others():
    found = problems_for(mbPolicy="[]", tpmPolicy="{}", agentUid="0")
    assert sorted(p.split(":")[1] for p in found) == ["agentUid", "mbPolicy"]


# --- enrollment and the verifier -------------------------------------------------------------------

def test_agents_are_enrolled_and_verified_with_the_reference_state(run):
    program = run("swtpm", **MEASURED)
    expected = settings_for(**MEASURED).mb_policy
    for name in ("enrollment-enroll", "enrollment-verify"):
        environment = program.named(name).plain["environment"]
        assert (environment["MB_POLICY"], environment["TPM_POLICY"]) == (expected, "{}")
    assert program.outputs["mbPolicy"].value == expected
    assert run("swtpm").named("enrollment-enroll").plain["environment"]["MB_POLICY"] == ""


def test_a_new_reference_state_changes_what_the_enrollment_command_runs_with(run):
    # Pulumi reruns a Command (its update: enroll.py update, which re-enrolls) exactly when its inputs change.
    # REFSTATE is a JSON reference state whose kernels is a list
    newer = json.dumps({**REFSTATE, "kernels": [*REFSTATE["kernels"], {**REFSTATE["kernels"][0], "kernel_cmdline": "x"}]})  # type: ignore[misc, index]
    before = run("swtpm", **MEASURED).named("enrollment-enroll").plain
    after = run("swtpm", mbPolicy=newer, tpmPolicy="{}").named("enrollment-enroll").plain
    assert before["environment"]["MB_POLICY"] != after["environment"]["MB_POLICY"]
    assert after["update"].endswith("enroll.py update")



def test_the_attestation_controller_enrolls_with_the_reference_state_the_deploy_time_enrollment_uses(run):
    def controller_policies(program) -> dict:
        (config_map,) = [r for r in kube_objects(program, "ConfigMap", "infra")
                         if r.plain["metadata"]["name"] == "keylime-attestation-controller-policy"]
        return config_map.plain["data"]

    measured, plain = run("swtpm", **MEASURED), run("swtpm")
    for program in (measured, plain):
        environment = program.named("enrollment-enroll").plain["environment"]
        assert controller_policies(program) == {"tpm_policy.json": environment["TPM_POLICY"],
                                                "mb_policy.json": environment["MB_POLICY"]}
    assert json.loads(controller_policies(measured)["mb_policy.json"]) == json.loads(settings_for(**MEASURED).mb_policy)
    assert controller_policies(plain)["mb_policy.json"] == ""

def test_the_verifier_judges_reference_states_with_keylimes_example_policy_at_every_attestation():
    verifier = keylime_conf.verifier_conf(settings_for())
    assert "measured_boot_policy_name = example\n" in verifier
    assert "measured_boot_evaluate = always\n" in verifier


# --- swtpm: the synthetic boot -----------------------------------------------------------------------

def agent_parts(program, cluster: str):
    (config_map,) = [
        r for r in kube_objects(program, "ConfigMap", cluster) if r.plain["metadata"]["name"] == "keylime-agent-config"
    ]
    (daemon_set,) = [r for r in kube_objects(program, "DaemonSet", cluster) if r.plain["metadata"]["name"] == "keylime-agent"]
    agent_conf = tomllib.loads(config_map.plain["data"]["agent.conf"])["agent"]
    return config_map.plain, daemon_set, agent_conf


def test_swtpm_agents_get_the_synthetic_log_and_their_sidecar_extends_the_pcrs_with_it(run):
    config_map, daemon_set, agent_conf = agent_parts(run("swtpm", **MEASURED), "agents-1")
    log = base64.b64decode(config_map["binaryData"]["binary_bios_measurements"])
    assert log == boot_log.encode(boot_log.synthetic_boot())
    extends = config_map["data"]["boot-log.extends"].splitlines()
    assert extends == [f"{pcr}:sha256={digest}" for pcr, digest in boot_log.extends(log)]
    assert agent_conf["measuredboot_ml_path"] == f"{keylime_conf.CONF_DIR}/binary_bios_measurements"
    (sidecar,) = [c for c in pod_spec(daemon_set)["initContainers"] if c["name"] == "swtpm"]
    assert sidecar["command"][:2] == ["/bin/bash", "/opt/keylime-push/swtpm-boot.sh"]
    assert sidecar["command"][2:4] == ["swtpm", "socket"]
    assert env_of(sidecar)["BOOT_LOG_EXTENDS"] == "/opt/keylime-push/boot-log.extends"
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-e", env_of(sidecar)["BOOTED_MARKER"]]


def test_without_an_mb_policy_nothing_of_measured_boot_is_deployed(run):
    for stack, cluster in (("swtpm", "agents-1"), ("hwtpm", "vm")):
        config_map, daemon_set, agent_conf = agent_parts(run(stack), cluster)
        assert "binaryData" not in config_map and "measuredboot_ml_path" not in agent_conf
        spec = pod_spec(daemon_set)
        # The node's own state directories are hostPaths too; the boot log is not among them.
        host_paths = [volume["hostPath"]["path"] for volume in spec["volumes"] if "hostPath" in volume]
        assert host_paths and agent_workload.SECURITYFS_BOOT_LOG not in host_paths
        assert "boot-log" not in [c["name"] for c in all_containers(daemon_set)]
        assert all(c["command"][0] != "/bin/bash" or "swtpm-boot.sh" not in c["command"][1] for c in all_containers(daemon_set))


# --- hwtpm: the boot-log init step -----------------------------------------------------------------


def test_the_vms_agent_reads_a_copy_made_by_an_init_step_with_no_user_0_and_no_capability(run):
    _, daemon_set, agent_conf = agent_parts(run("hwtpm", **MEASURED), "vm")
    spec = pod_spec(daemon_set)
    (reader,) = spec["initContainers"]
    security = reader["securityContext"]
    assert reader["name"] == "boot-log" and reader["command"][0] == "cp"
    assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (490, 0, True)
    assert security["capabilities"] == {"drop": ["ALL"]} and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True and security["privileged"] is False
    (host_path,) = [v for v in spec["volumes"] if v.get("hostPath", {}).get("type") == "File"]
    assert host_path["hostPath"] == {"path": "/sys/kernel/security/tpm0/binary_bios_measurements", "type": "File"}
    mounting = [
        c["name"] for c in all_containers(daemon_set) for m in c.get("volumeMounts", []) if m["name"] == host_path["name"]
    ]
    assert mounting == ["boot-log"]
    assert all(m.get("readOnly") for m in reader["volumeMounts"] if m["name"] == host_path["name"])
    (agent,) = spec["containers"]
    assert agent["securityContext"]["runAsGroup"] == 490  # the agent itself keeps its own group
    assert agent_conf["measuredboot_ml_path"] == keylime_conf.BOOT_LOG
    assert "securityfs" in daemon_set.plain["metadata"]["annotations"]["keylime-push/boot-log"]


# --- the VM boots UEFI with Secure Boot --------------------------------------------------------------


def test_the_vm_boots_ovmf_with_secure_boot_and_its_own_nvram(hwtpm):
    domain = hwtpm.named("vm-domain").plain
    assert domain["firmware"] == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    assert domain["nvram"] == {
        "file": "/var/lib/libvirt/qemu/nvram/keylime-vtpm_VARS.fd",
        "template": "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
    }
    assert domain["xml"]["xslt"] == (ROOT / "components" / "scripts" / "secure-boot.xsl").read_text()


def test_the_xslt_makes_the_providers_loader_secure_and_adds_smm():
    # The domain XML as terraform-provider-libvirt 0.8 renders a firmware: loader secure="no", no SMM.
    rendered = """<domain type="kvm"><name>keylime-vtpm</name><os><type arch="x86_64" machine="q35">hvm</type>
      <loader readonly="yes" secure="no" type="pflash">/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</loader>
      <nvram template="/usr/share/OVMF/OVMF_VARS_4M.ms.fd">/var/lib/libvirt/qemu/nvram/keylime-vtpm_VARS.fd</nvram></os>
      <features><pae/><acpi/><apic/></features><devices><tpm model="tpm-crb"/></devices></domain>"""
    script = (
        "import sys; from lxml import etree; "
        "xslt = etree.XSLT(etree.parse(sys.argv[1])); "
        "print(etree.tostring(xslt(etree.fromstring(sys.stdin.read().encode()))).decode())"
    )
    # lxml lives with the validators (requirements-validators.txt).
    python = os.path.join(os.environ.get("VALIDATORS_BIN", os.path.dirname(sys.executable)), "python")
    result = subprocess.run(
        [python, "-c", script, str(ROOT / "components" / "scripts" / "secure-boot.xsl")],
        input=rendered,
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    assert 'secure="yes"' in out and 'secure="no"' not in out
    assert '<smm state="on"/>' in out and "<pae/>" in out and '<tpm model="tpm-crb"/>' in out


def test_the_vms_event_log_is_read_once_it_booted_and_exported_for_make_vm_boot_log(hwtpm):
    reader = hwtpm.named("vm-boot-log")
    assert reader.plain["create"] == "sudo base64 --wrap=0 /sys/kernel/security/tpm0/binary_bios_measurements"
    assert reader.plain["triggers"] == ["vm-domain-id"]  # a new VM, a new boot, a new log
    assert "vm-ready" in {dependency.rsplit("::", 1)[-1] for dependency in reader.dependencies}
    assert "vmBootLog" in hwtpm.outputs and "vmBootLog" not in run_program("swtpm").outputs
