"""VtpmVm: a QEMU/libvirt VM with an emulated TPM 2.0, bootstrapped into a one-node kubeadm cluster,
running the push agent on /dev/tpmrm0 exposed by squat/generic-device-plugin."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s
import pulumi_libvirt as libvirt
import pulumi_tls as tls

from components import cloud_init
from components.agent_workload import SECURITYFS_BOOT_LOG, AgentPodArgs, declare_agent_workload, node_state_dirs
from components.device_plugin import declare_device_plugin
from components.providers import cluster_provider

VM_NAME = "keylime-vtpm"
STORAGE_POOL = "default"
ROOT_DISK_BYTES = 20 * 1024**3
SCRIPTS = Path(__file__).with_name("scripts")
LOAD_SCRIPT = "components/scripts/vm-load-images.sh"
# kubeadm's API server port on the VM's own address (which its certificate carries).
KUBEADM_API_SERVER_PORT = 6443
# UEFI firmware with Secure Boot and Microsoft's keys enrolled (Debian/Ubuntu's ovmf package), so the VM's
# firmware, shim, grub and kernel measure a real boot into the vTPM and the kernel has its event log.
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS_TEMPLATE = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
NVRAM = f"/var/lib/libvirt/qemu/nvram/{VM_NAME}_VARS.fd"
SECURE_BOOT_XSLT = SCRIPTS / "secure-boot.xsl"


@dataclasses.dataclass
class VtpmVmArgs:
    agent: AgentPodArgs
    libvirt_uri: str
    network_cidr: str
    """The libvirt NAT network: the host is its first address (the agent dials it), the VM its tenth."""
    base_image: str
    """The cloud image (qcow2) the root disk grows from: an http(s) URL or an absolute path."""
    cpus: int
    memory_mib: int


class VtpmVm(pulumi.ComponentResource):
    """An `AgentHost`: one VM with an emulated TPM, a one-node kubeadm cluster running one agent."""

    host_name: str = VM_NAME
    identity: pulumi.Output[str]
    network: libvirt.Network
    """Brings the host's address on the VM's network, where the infra cluster publishes its NodePorts."""
    domain: libvirt.Domain
    provider: k8s.Provider
    daemon_set: k8s.apps.v1.DaemonSet
    boot_log: pulumi.Output[str]
    """The VM's UEFI event log (base64) as it booted: what a measured-boot reference state is made from."""
    api_server: str
    machine: pulumi.Resource | None

    def __init__(self, name: str, args: VtpmVmArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:vm:VtpmVm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        libvirt_provider = libvirt.Provider(f"{name}-libvirt", uri=args.libvirt_uri, opts=child)
        on_libvirt = pulumi.ResourceOptions(parent=self, provider=libvirt_provider)
        address = cloud_init.vm_address(args.network_cidr)

        # Our own keys: the host logs in with one and pins the VM's host key from the other.
        login_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
        host_key = tls.PrivateKey(f"{name}-ssh-host-key", algorithm="ED25519", opts=child)
        # pulumi's Output.secret typing cannot infer from an Output[str] argument
        login_private_key = pulumi.Output.secret(login_key.private_key_openssh)  # type: ignore[var-annotated, arg-type]
        # pulumi's Output.secret typing cannot infer from an Output[str] argument
        host_private_key = pulumi.Output.secret(host_key.private_key_openssh)  # type: ignore[var-annotated, arg-type]

        network = self.network = libvirt.Network(
            f"{name}-network",
            name=VM_NAME,
            mode="nat",
            addresses=[args.network_cidr],
            # The VM has a static address (cloud-init); libvirt still serves DNS on the host address.
            dhcp=libvirt.NetworkDhcpArgs(enabled=False),
            dns=libvirt.NetworkDnsArgs(enabled=True),
            autostart=True,
            opts=on_libvirt,
        )
        base = libvirt.Volume(f"{name}-base", name=f"{VM_NAME}-base.qcow2", pool=STORAGE_POOL,
                              source=args.base_image, format="qcow2", opts=on_libvirt)
        user_data = pulumi.Output.all(
            login_key.public_key_openssh, host_private_key, host_key.public_key_openssh
        ).apply(lambda keys: cloud_init.user_data(args.network_cidr, *keys))
        network_config = cloud_init.network_config(args.network_cidr)
        guest = {
            "machine": "q35",
            "vcpu": args.cpus,
            "memory": args.memory_mib,
            # The emulated TPM 2.0 (swtpm on the host, started by libvirt): the guest kernel sees a CRB TPM.
            "tpm": {"backend_type": "emulator", "backend_version": "2.0", "model": "tpm-crb"},
            "address": address,
        }
        # Everything the guest is made from. The root and cloud-init disks are named after it, so whatever
        # replaces the domain replaces its root disk too (disks force a new domain): a replaced VM starts
        # from a fresh disk, never from the old kubeadm cluster, and cloud-init runs again on it.
        generation = pulumi.Output.unsecret(
            pulumi.Output.all(args.base_image, args.network_cidr, guest, user_data, network_config).apply(
                lambda parts: hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
            )
        )
        root = libvirt.Volume(f"{name}-root", name=generation.apply(lambda g: f"{VM_NAME}-root-{g}.qcow2"),
                              pool=STORAGE_POOL, base_volume_id=base.id, size=ROOT_DISK_BYTES, format="qcow2",
                              opts=on_libvirt)
        seed = libvirt.CloudInitDisk(
            f"{name}-cloud-init",
            name=generation.apply(lambda g: f"{VM_NAME}-cloud-init-{g}.iso"),
            pool=STORAGE_POOL,
            user_data=user_data,
            network_config=network_config,
            opts=on_libvirt,
        )
        # guest[...] values come from a plain dict the provider's overloads cannot match
        self.domain = libvirt.Domain(  # type: ignore[call-overload]
            f"{name}-domain",
            name=VM_NAME,
            machine=guest["machine"],
            vcpu=args.cpus,
            memory=args.memory_mib,
            cpu=libvirt.DomainCpuArgs(mode="host-passthrough"),
            firmware=OVMF_CODE,
            nvram=libvirt.DomainNvramArgs(file=NVRAM, template=OVMF_VARS_TEMPLATE),
            # The provider writes the loader with secure="no" and cannot declare SMM, which Secure Boot needs.
            xml=libvirt.DomainXmlArgs(xslt=SECURE_BOOT_XSLT.read_text()),
            disks=[libvirt.DomainDiskArgs(volume_id=root.id)],
            cloudinit=seed.id,
            network_interfaces=[libvirt.DomainNetworkInterfaceArgs(network_id=network.id, addresses=[address])],
            # guest['tpm'] is a dict of DomainTpmArgs keywords
            tpm=libvirt.DomainTpmArgs(**guest["tpm"]),  # type: ignore[arg-type]
            consoles=[libvirt.DomainConsoleArgs(type="pty", target_port="0", target_type="serial")],
            autostart=True,
            # The domain's name is a singleton on the host: the old one must go before its replacement.
            opts=pulumi.ResourceOptions.merge(on_libvirt, pulumi.ResourceOptions(delete_before_replace=True)),
        )
        self.identity = self.domain.id
        self.machine = self.domain
        self.api_server = f"https://{address}:{KUBEADM_API_SERVER_PORT}"

        connection = command.remote.ConnectionArgs(
            host=address,
            user=cloud_init.VM_USER,
            private_key=login_private_key,
            host_key=host_key.public_key_openssh,
            # The VM boots and installs Kubernetes before SSH answers the first time.
            dial_error_limit=90,
            per_dial_timeout=10,
        )
        ready = command.remote.Command(
            f"{name}-ready",
            connection=connection,
            # Runs the bootstrap again when cloud-init's run failed, so every `up` retries it.
            create=f"BOOTSTRAP={cloud_init.BOOTSTRAP_PATH} BOOTSTRAP_ENV={cloud_init.BOOTSTRAP_ENV_PATH} bash -s",
            stdin=(SCRIPTS / "vm-wait-ready.sh").read_text(),
            triggers=[self.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.domain]),
        )
        kubeconfig = command.remote.Command(
            f"{name}-kubeconfig",
            connection=connection,
            create="sudo cat /etc/kubernetes/admin.conf",
            triggers=[self.domain.id],
            logging=command.remote.Logging.NONE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready], additional_secret_outputs=["stdout"]),
        )
        # Read once per VM (the log does not change until it reboots), so that `make vm-boot-log` can make a
        # reference state from it without anyone logging in.
        self.boot_log = command.remote.Command(
            f"{name}-boot-log",
            connection=connection,
            create=f"sudo base64 --wrap=0 {SECURITYFS_BOOT_LOG}",
            triggers=[self.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]),
        ).stdout
        agent_image = args.agent.image.ref
        images_loaded = command.local.Command(
            f"{name}-images",
            create=f"{LOAD_SCRIPT}",
            environment={
                "VM_HOST": address,
                "VM_USER": cloud_init.VM_USER,
                "SSH_PRIVATE_KEY": login_private_key,
                "SSH_HOST_PUBLIC_KEY": host_key.public_key_openssh,
                "IMAGES": agent_image,
            },
            # Tags carry the build's content hash; a new VM needs the images again as well.
            triggers=[agent_image, self.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready, args.agent.image.build]),
        )
        node_state = command.remote.Command(
            f"{name}-node-state",
            connection=connection,
            # As root on the node itself, so no pod needs root or CAP_CHOWN for the agent's hostPath; a new
            # agentUid/agentGid reruns it and hands the kept state to the new user.
            create=shlex.join(["sudo", "bash", "-s", "--", f"{args.agent.uid}:{args.agent.gid}", *node_state_dirs("device")]),
            stdin=(SCRIPTS / "node-state.sh").read_text(),
            triggers=[self.domain.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]),
        )
        self.provider = cluster_provider(f"{name}-k8s", kubeconfig.stdout, self.domain.id, child)
        objects = pulumi.ResourceOptions(
            parent=self, provider=self.provider, deleted_with=self.domain, depends_on=[images_loaded, node_state]
        )
        device_plugin = declare_device_plugin(name, objects)
        self.daemon_set = declare_agent_workload(
            name,
            args.agent,
            "device",
            pulumi.ResourceOptions.merge(objects, pulumi.ResourceOptions(depends_on=[device_plugin])),
        )
        self.register_outputs({"address": address})
