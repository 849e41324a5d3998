"""The hwtpm stack as declared: the libvirt VM with its TPM, its cloud-init, the device plugin, the hardware agent."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import ROOT, all_containers, env_of, kube_objects, pod_spec, settings_for

from components import cloud_init
from components.endpoints import vm_host_address
from components.settings import parse_settings
from tools.offline import is_secret

VM_FAKES = ROOT / "tests" / "fakes" / "vm"
BOOTSTRAP = ROOT / "components" / "scripts" / "vm-bootstrap.sh"
LOAD_IMAGES = ROOT / "components" / "scripts" / "vm-load-images.sh"
# The shape of `containerd config default` (1.7, config version 2), trimmed to what the bootstrap edits.
CONTAINERD_DEFAULT = """version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    device_ownership_from_security_context = false
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = false
"""


def test_the_domain_has_an_emulated_tpm_2_0_and_the_configured_size(run):
    program = run("hwtpm", vmCpus=4, vmMemoryMiB=8192)
    domain = program.named("vm-domain").plain
    assert domain["tpm"] == {"backendType": "emulator", "backendVersion": "2.0", "model": "tpm-crb"}
    assert (domain["vcpu"], domain["memory"]) == (4, 8192)
    assert domain["cloudinit"] == "vm-cloud-init-id"
    assert domain["disks"] == [{"volumeId": "vm-root-id"}]
    assert domain["networkInterfaces"] == [{"networkId": "vm-network-id", "addresses": ["192.168.150.10"]}]


def test_the_root_disk_grows_from_the_configured_image(run):
    program = run("hwtpm", vmImage="https://images.example.org/noble.img")
    assert program.named("vm-base").plain["source"] == "https://images.example.org/noble.img"
    assert program.named("vm-root").plain["baseVolumeId"] == "vm-base-id"


def test_the_network_is_nat_on_the_configured_cidr(run):
    network = run("hwtpm", vmNetworkCidr="10.77.0.0/24").named("vm-network").plain
    assert network["mode"] == "nat" and network["addresses"] == ["10.77.0.0/24"]


def test_libvirt_resources_use_the_configured_connection(run):
    program = run("hwtpm", libvirtUri="qemu+ssh://lab.example/system")
    provider = program.named("vm-libvirt")
    assert provider.plain["uri"] == "qemu+ssh://lab.example/system"
    libvirt_resources = [r for r in program.resources if r.type.startswith("libvirt:index/")]
    assert {r.type.removeprefix("libvirt:index/") for r in libvirt_resources} == {
        "network:Network", "volume:Volume", "cloudInitDisk:CloudInitDisk", "domain:Domain"}
    for resource in libvirt_resources:
        assert resource.provider.startswith(provider.urn), resource.name


@pytest.fixture(scope="module")
def user_data(hwtpm) -> str:
    return hwtpm.named("vm-cloud-init").plain["userData"]


def test_the_user_data_passes_cloud_init_schema(user_data, tmp_path):
    path = tmp_path / "user-data"
    path.write_text(user_data)
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout + result.stderr


def test_the_user_data_installs_the_repository_bootstrap_with_its_settings(user_data):
    config = yaml.safe_load(user_data.removeprefix("#cloud-config\n"))
    files = {f["path"]: f for f in config["write_files"]}
    assert files[cloud_init.BOOTSTRAP_PATH]["content"] == BOOTSTRAP.read_text()
    assert files[cloud_init.BOOTSTRAP_PATH]["permissions"] == "0755"
    assert "NODE_ADDRESS=192.168.150.10\n" in files[cloud_init.BOOTSTRAP_ENV_PATH]["content"]
    assert config["runcmd"] == [[cloud_init.BOOTSTRAP_PATH, cloud_init.BOOTSTRAP_ENV_PATH]]
    assert "containerd" in config["packages"]


def test_ssh_uses_our_keys_in_both_directions(hwtpm, user_data):
    config = yaml.safe_load(user_data.removeprefix("#cloud-config\n"))
    (user,) = config["users"]
    login_public = hwtpm.named("vm-ready").plain["connection"]
    assert config["ssh_pwauth"] is False and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 " + hashlib.sha256(b"vm-ssh-key").hexdigest()]
    assert config["ssh_keys"]["ed25519_public"] == login_public["hostKey"].strip()
    assert config["ssh_genkeytypes"] == ["ed25519"]


def test_the_vm_has_a_static_address_and_uses_the_host_for_routing_and_dns():
    settings = settings_for("hwtpm")
    network = yaml.safe_load(cloud_init.network_config(settings.vm_network_cidr))["ethernets"]["primary"]
    assert network["addresses"] == ["192.168.150.10/24"]
    assert network["routes"] == [{"to": "default", "via": vm_host_address(settings)}]


def test_the_vms_agent_dials_only_addresses_in_the_server_certificates(hwtpm):
    (config,) = kube_objects(hwtpm, "ConfigMap", "vm")
    agent = tomllib.loads(config.plain["data"]["agent.conf"])["agent"]
    verifier_sans = set(hwtpm.named("pki-verifier-csr").plain["ipAddresses"]) | set(
        hwtpm.named("pki-verifier-csr").plain["dnsNames"]
    )
    registrar_sans = set(hwtpm.named("pki-registrar-csr").plain["ipAddresses"])
    assert urlsplit(agent["verifier_url"]).hostname in verifier_sans
    assert agent["registrar_ip"] in registrar_sans
    assert agent["registrar_ip"] == vm_host_address(settings_for("hwtpm"))


def test_the_hardware_agent_takes_the_tpm_from_the_device_plugin_without_privilege(hwtpm):
    (agent_set,) = [d for d in kube_objects(hwtpm, "DaemonSet", "vm") if d.plain["metadata"]["name"] == "keylime-agent"]
    spec = pod_spec(agent_set)
    assert "initContainers" not in spec
    assert "supplementalGroups" not in spec["securityContext"]
    # The one hostPath is the agent's own state on the node (its AK), which the VM's node-state gives it.
    assert [v["hostPath"] for v in spec["volumes"] if "hostPath" in v] == [
        {"path": "/var/lib/keylime-push/agent", "type": "Directory"}
    ]
    (agent,) = spec["containers"]
    env = env_of(agent)
    assert env["TCTI"] == "device:/dev/tpmrm0"
    assert agent["resources"]["limits"]["squat.ai/tpm"] == "1"
    assert agent["securityContext"]["runAsNonRoot"] is True and agent["securityContext"]["privileged"] is False


def test_the_device_plugin_exposes_tpmrm0_as_squat_ai_tpm(hwtpm):
    (plugin,) = [d for d in kube_objects(hwtpm, "DaemonSet", "vm") if d.plain["metadata"]["name"] == "generic-device-plugin"]
    (container,) = pod_spec(plugin)["containers"]
    device = yaml.safe_load(container["args"][container["args"].index("--device") + 1])
    assert device == {"name": "tpm", "groups": [{"paths": [{"path": "/dev/tpmrm0"}]}]}
    assert any("privileged" in v for v in plugin.plain["metadata"]["annotations"].values())


@pytest.mark.parametrize("stack", ["swtpm", "hwtpm"])
def test_only_the_device_plugin_is_privileged_or_root(run, stack):
    privileged = []
    for workload in kube_objects(run(stack), "DaemonSet") + kube_objects(run(stack), "Deployment"):
        for container in all_containers(workload):
            context = container.get("securityContext", {})
            if context.get("privileged") or context.get("runAsUser") == 0 or not context.get("runAsNonRoot"):
                privileged.append(workload.plain["metadata"]["name"])
    assert privileged == (["generic-device-plugin"] if stack == "hwtpm" else [])


def test_the_vm_kubeconfig_and_ssh_key_stay_secret(hwtpm):
    kubeconfig = hwtpm.named("vm-kubeconfig")
    assert "stdout" in kubeconfig.additional_secret_outputs and kubeconfig.plain["logging"] == "none"
    assert is_secret(hwtpm.named("vm-ready").inputs["connection"])
    assert is_secret(hwtpm.named("vm-images").inputs["environment"])
    # The user-data carries the VM's SSH host private key.
    assert is_secret(hwtpm.named("vm-cloud-init").inputs["userData"])


def test_images_reach_the_vm_again_only_for_a_new_image_or_a_new_vm(hwtpm):
    load = hwtpm.named("vm-images").plain
    assert load["create"] == "components/scripts/vm-load-images.sh"
    assert load["triggers"] == [load["environment"]["IMAGES"], "vm-domain-id"]



@pytest.mark.parametrize("uri,reader", [
    ("qemu:///system", "bash -s -- system"),
    ("qemu:///session", "bash -s -- session"),
    ("qemu+ssh://ops@hv.example:2222/system", "ssh -o BatchMode=yes -p 2222 ops@hv.example bash -s -- system"),
    ("qemu+ssh://hv.example/system", "ssh -o BatchMode=yes hv.example bash -s -- system"),
])
def test_the_vtpm_s_ek_ca_is_read_on_the_libvirt_host_where_swtpm_setup_made_it(run, uri, reader):
    command = run("hwtpm", libvirtUri=uri).named("vm-ek-issuer").plain
    assert command["create"] == reader
    assert command["stdin"] == (ROOT / "components" / "scripts" / "swtpm-localca-issuer.sh").read_text()


def test_a_libvirt_transport_that_gives_no_shell_on_the_host_is_refused_when_eks_are_checked():
    with pytest.raises(ValueError, match=re.escape(
            "keylime-push:libvirtUri: got 'qemu+tls://hv.example/system'; allowed: with requireEkCert, a local")):
        parse_settings({"tpmMode": "hwtpm", "agentClusters": "1", "libvirtUri": "qemu+tls://hv.example/system"})
    assert parse_settings({"tpmMode": "hwtpm", "agentClusters": "1", "requireEkCert": "false",
                           "libvirtUri": "qemu+tls://hv.example/system"}).require_ek_cert is False

# --- the scripts, with the VM's commands stood in for ---------------------------------------


@pytest.fixture
def vm_fakes(tmp_path):
    (tmp_path / "containerd.toml").write_text(CONTAINERD_DEFAULT)
    env = {
        **os.environ,
        "PATH": f"{VM_FAKES}:{os.environ['PATH']}",
        "FAKE_STATE": str(tmp_path),
        "BOOTSTRAP_ROOT": str(tmp_path / "root"),
        "FAKE_CONTAINERD_DEFAULT_CONFIG": str(tmp_path / "containerd.toml"),
    }
    env_file = tmp_path / "bootstrap.env"
    env_file.write_text(cloud_init.bootstrap_env(settings_for("hwtpm").vm_network_cidr))
    return tmp_path, env, env_file


def test_bootstrap_switches_both_containerd_keys_in_place_and_runs_kubeadm(vm_fakes):
    tmp_path, env, env_file = vm_fakes
    result = subprocess.run([str(BOOTSTRAP), str(env_file)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "root" / "etc" / "containerd" / "config.toml").read_text()
    assert config.count("device_ownership_from_security_context") == 1
    assert "device_ownership_from_security_context = true" in config and "SystemdCgroup = true" in config
    calls = (tmp_path / "vm-calls.log").read_text()
    assert (
        "kubeadm init --pod-network-cidr 10.244.0.0/16 --service-cidr 10.96.0.0/12 --apiserver-advertise-address 192.168.150.10"
        in calls
    )
    assert "apt-get install -y kubelet kubeadm kubectl kubernetes-cni" in calls
    assert calls.index("systemctl restart containerd") < calls.index("kubeadm init")
    sources = (tmp_path / "root" / "etc" / "apt" / "sources.list.d" / "kubernetes.list").read_text()
    assert "pkgs.k8s.io/core:/stable:/v1.32/deb/" in sources


def test_bootstrap_refuses_a_containerd_config_without_the_key(vm_fakes):
    tmp_path, env, env_file = vm_fakes
    (tmp_path / "containerd.toml").write_text(
        CONTAINERD_DEFAULT.replace("    device_ownership_from_security_context = false\n", "")
    )
    result = subprocess.run([str(BOOTSTRAP), str(env_file)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "exactly one device_ownership_from_security_context" in result.stderr
    assert "kubeadm init" not in (tmp_path / "vm-calls.log").read_text()


def test_images_stream_into_the_vm_with_the_pinned_host_key_and_no_key_left_behind(vm_fakes):
    tmp_path, env, _ = vm_fakes
    env = {
        **env,
        "VM_HOST": "192.168.150.10",
        "VM_USER": "keylime-push",
        "SSH_PRIVATE_KEY": "PRIVATE",
        "SSH_HOST_PUBLIC_KEY": "ssh-ed25519 AAAAhostkey",
        "IMAGES": "keylime-push/agent:0.2.9-abc",
    }
    result = subprocess.run([str(LOAD_IMAGES)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "vm-calls.log").read_text()
    assert "StrictHostKeyChecking=yes" in calls
    assert "known_hosts: 192.168.150.10 ssh-ed25519 AAAAhostkey" in calls
    assert "keylime-push@192.168.150.10 sudo ctr --namespace k8s.io images import -" in calls
    assert "stdin: image-tar keylime-push/agent:0.2.9-abc" in calls
    assert "identity-mode 600" in calls
    identity = calls.split("-i ")[1].split()[0]
    assert not Path(identity).exists()


def test_readiness_is_the_repository_script_run_over_ssh_knowing_where_the_bootstrap_is(hwtpm):
    ready = hwtpm.named("vm-ready").plain
    assert ready["stdin"] == (ROOT / "components" / "scripts" / "vm-wait-ready.sh").read_text()
    assert ready["create"] == f"BOOTSTRAP={cloud_init.BOOTSTRAP_PATH} BOOTSTRAP_ENV={cloud_init.BOOTSTRAP_ENV_PATH} bash -s"


def wait_ready(vm_fakes, failing: str = ""):
    tmp_path, env, _ = vm_fakes
    script = ROOT / "components" / "scripts" / "vm-wait-ready.sh"
    env = {**env, "FAKE_FAIL": failing, "BOOTSTRAP": cloud_init.BOOTSTRAP_PATH, "BOOTSTRAP_ENV": cloud_init.BOOTSTRAP_ENV_PATH}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    return result, (tmp_path / "vm-calls.log").read_text().splitlines()


NODE_READY = "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf wait node --all --for=condition=Ready --timeout=600s"
BOOTSTRAP_AGAIN = f"sudo {cloud_init.BOOTSTRAP_PATH} {cloud_init.BOOTSTRAP_ENV_PATH}"


def test_readiness_waits_for_cloud_init_then_the_node(vm_fakes):
    result, calls = wait_ready(vm_fakes)
    assert result.returncode == 0, result.stderr
    assert calls == ["cloud-init status --wait", NODE_READY]


def test_readiness_shows_a_failed_bootstrap_and_runs_it_again_so_another_up_retries_it(vm_fakes):
    result, calls = wait_ready(vm_fakes, "cloud-init")
    assert result.returncode == 0, result.stderr
    assert calls == ["cloud-init status --wait", "sudo tail -n 50 /var/log/cloud-init-output.log", BOOTSTRAP_AGAIN, NODE_READY]


def test_readiness_fails_without_waiting_for_the_node_when_the_bootstrap_fails_again(vm_fakes):
    result, calls = wait_ready(vm_fakes, "cloud-init sudo")
    assert result.returncode == 1 and "running the bootstrap again" in result.stderr
    assert BOOTSTRAP_AGAIN in calls and NODE_READY not in calls


def test_a_bootstrap_run_again_after_a_partial_kubeadm_init_resets_it_first(vm_fakes):
    tmp_path, env, env_file = vm_fakes
    manifests = tmp_path / "root" / "etc" / "kubernetes" / "manifests"
    manifests.mkdir(parents=True)
    (manifests / "kube-apiserver.yaml").write_text("kind: Pod\n")
    result = subprocess.run([str(BOOTSTRAP), str(env_file)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "vm-calls.log").read_text()
    assert "kubeadm reset --force" in calls and calls.index("kubeadm reset --force") < calls.index("kubeadm init")


def test_a_first_bootstrap_does_not_reset(vm_fakes):
    tmp_path, env, env_file = vm_fakes
    subprocess.run([str(BOOTSTRAP), str(env_file)], env=env, capture_output=True, text=True, check=True)
    assert "kubeadm reset" not in (tmp_path / "vm-calls.log").read_text()


def test_the_vm_is_the_one_agent_host_enrollment_waits_for_and_re_enrolls_on(hwtpm):
    enroll = hwtpm.named("enrollment-enroll")
    assert enroll.plain["triggers"] == ["infra-cluster-id", "vm-domain-id"]
    assert enroll.plain["environment"]["EXPECTED_AGENTS"] == "1"
    assert hwtpm.outputs["agentHosts"].value == ["keylime-vtpm"]


# --- day 2: the node's state, a fresh disk for a new domain ------------------------------------


def test_the_vm_is_prepared_for_the_agents_host_path_as_root_over_ssh_before_the_agent_starts(run):
    program = run("hwtpm", agentUid=1234, agentGid=2345)
    prepare = program.named("vm-node-state").plain
    assert prepare["stdin"] == (ROOT / "components" / "scripts" / "node-state.sh").read_text()
    assert prepare["create"] == "sudo bash -s -- 1234:2345 /var/lib/keylime-push/agent"
    assert prepare["triggers"] == ["vm-domain-id"]
    (agent_set,) = [d for d in kube_objects(program, "DaemonSet", "vm") if d.plain["metadata"]["name"] == "keylime-agent"]
    assert program.named("vm-node-state").urn in agent_set.dependencies


def disks(program) -> tuple[str, str]:
    return program.named("vm-root").plain["name"], program.named("vm-cloud-init").plain["name"]


@pytest.mark.parametrize(
    "change",
    [
        {"vmCpus": 4},
        {"vmMemoryMiB": 8192},
        {"vmImage": "https://images.example.org/noble.img"},
        {"vmNetworkCidr": "10.77.0.0/24"},
    ],
)
def test_whatever_replaces_the_domain_replaces_its_root_disk_too(run, hwtpm, change):
    assert all(name != other for name, other in zip(disks(hwtpm), disks(run("hwtpm", **change)), strict=True))


def test_the_disks_keep_their_names_while_nothing_about_the_guest_changes(run, hwtpm):
    assert disks(run("hwtpm")) == disks(hwtpm)
    assert disks(run("hwtpm", extraSans=["attest.example.org"])) == disks(hwtpm)


def test_the_domain_goes_before_its_replacement_comes(hwtpm):
    assert hwtpm.named("vm-domain").delete_before_replace is True
