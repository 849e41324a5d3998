"""keylime-push: Keylime push-model attestation on Kind clusters (swtpm) or a vTPM VM (hwtpm).

    settings -> PKI + images (start at once) -> infra cluster | agent clusters (in parallel)
             -> enrollment (the deploy-time Command) -> attestation controller (carries it on after `up`)
"""

import pulumi
import pulumi_command as command
import pulumi_docker as docker
import pulumi_tls as tls

from components import keylime_conf
from components.agent_cluster import AgentCluster, AgentClusterArgs
from components.agent_workload import AgentHost, AgentPodArgs
from components.attestation_controller import AttestationController, AttestationControllerArgs, WatchedCluster
from components.endpoints import SERVERS, agent_cluster_name, dial, host_port_address, infra_cluster_name, server_sans
from components.enrollment import Enrollment, EnrollmentArgs
from components.images import CONTROLLER, SERVER_COMPONENTS, KeylimeImages, KeylimeImagesArgs, LocalClones
from components.infra_cluster import InfraCluster, InfraClusterArgs
from components.keylime_conf import agent_count
from components.pki import KeylimePki, KeylimePkiArgs
from components.settings import NAMESPACE, load_settings
from components.vtpm_vm import VtpmVm, VtpmVmArgs

settings = load_settings()
# kind-cluster.sh adopts and deletes only the clusters it marked with this.
cluster_owner = f"{NAMESPACE}/{settings.stack}"

# Default providers are disabled (Pulumi.yaml): every provider is declared here, once.
tls_provider = tls.Provider("tls")
command_provider = command.Provider("command")
docker_provider = docker.Provider("docker")
local = pulumi.ResourceOptions(providers=[command_provider, docker_provider])
local_and_tls = pulumi.ResourceOptions(providers=[command_provider, docker_provider, tls_provider])

pki = KeylimePki(
    "pki",
    KeylimePkiArgs(
        server_sans={server: server_sans(settings, server) for server in SERVERS},
        tpm_manufacturer_ca=settings.tpm_mode == "swtpm",
    ),
    pulumi.ResourceOptions(providers=[tls_provider]),
)
images = KeylimeImages(
    "images",
    KeylimeImagesArgs(
        keylime_version=settings.keylime_version,
        agent_version=settings.agent_version,
        uid=settings.agent_uid,
        gid=settings.agent_gid,
        clones=(
            LocalClones(keylime=settings.keylime_git, rust_keylime=settings.rust_keylime_git)
            if settings.keylime_git is not None and settings.rust_keylime_git is not None
            else None
        ),
    ),
    local,
)

agent = AgentPodArgs(
    image=images.image("agent"),
    agent_conf=keylime_conf.agent_conf(settings),
    uid=settings.agent_uid,
    gid=settings.agent_gid,
    ca_cert_pem=pki.ca_cert_pem,
    measured_boot=bool(settings.mb_policy),
)
agent_hosts: list[AgentHost] = (
    [
        AgentCluster(
            f"agents-{index}",
            AgentClusterArgs(
                cluster_name=agent_cluster_name(settings, index),
                owner=cluster_owner,
                agent=agent,
                tpm_manufacturer_ca=pki.tpm_manufacturer_ca,
            ),
            local,
        )
        for index in range(1, settings.agent_clusters + 1)
    ]
    if settings.tpm_mode == "swtpm"
    else [
        VtpmVm(
            "vm",
            VtpmVmArgs(
                agent=agent,
                libvirt_uri=settings.libvirt_uri,
                network_cidr=settings.vm_network_cidr,
                base_image=settings.vm_image,
                cpus=settings.vm_cpus,
                memory_mib=settings.vm_memory_mib,
                read_ek_issuer=settings.require_ek_cert,
            ),
            local_and_tls,
        )
    ]
)

infra = InfraCluster(
    "infra",
    InfraClusterArgs(
        cluster_name=infra_cluster_name(settings),
        owner=cluster_owner,
        images={component: images.image(component) for component in (*SERVER_COMPONENTS, CONTROLLER)},
        configs={
            "registrar": keylime_conf.registrar_conf(settings),
            "verifier": keylime_conf.verifier_conf(settings),
            "tenant": keylime_conf.tenant_conf(settings),
        },
        ca_cert_pem=pki.ca_cert_pem,
        registrar_cert=pki.servers["registrar"],
        verifier_cert=pki.servers["verifier"],
        verifier_client_cert=pki.clients["verifier-client"],
        tenant_cert=pki.clients["tenant"],
        uid=settings.agent_uid,
        gid=settings.agent_gid,
        registrar_node_port=settings.registrar_node_port,
        registrar_tls_node_port=settings.registrar_tls_node_port,
        verifier_node_port=settings.verifier_node_port,
        listen_address=host_port_address(settings),
        # hwtpm: that address is the host's on the VM's network, which exists only once the network does.
        listen_address_from=[host.network for host in agent_hosts if isinstance(host, VtpmVm)],
    ),
    local,
)

enrollment = Enrollment(
    "enrollment",
    EnrollmentArgs(
        tpm_policy_json=settings.tpm_policy_json,
        mb_policy_json=settings.mb_policy,
        expected_agents=agent_count(settings),
        infra_kubeconfig=infra.kind.kubeconfig,
        cluster_ids=[infra.kind.cluster.id, *(host.identity for host in agent_hosts)],
        ready=[*infra.workloads, *(host.daemon_set for host in agent_hosts)],
    ),
    local,
)

controller = AttestationController(
    "controller",
    AttestationControllerArgs(
        image=images.image(CONTROLLER).ref,
        infra_provider=infra.kind.provider,
        # It takes over from the deploy-time enrollment: on a new policy, enroll.py re-enrolls first and the
        # controller reads the new policy only then, so the two never act on the same agent at once. It does not
        # wait for the verification: a node that fails it is exactly one the controller must gate.
        infra_ready=[infra.namespace, infra.kind.images_loaded, enrollment.enroll],
        infra_cluster=infra.kind.cluster,
        registrar_url=dial(settings, "controller", "registrar").url,
        verifier_url=dial(settings, "controller", "verifier").url,
        ca_cert_pem=pki.ca_cert_pem,
        client_cert=pki.clients["attestation-controller"],
        tpm_policy_json=settings.tpm_policy_json,
        mb_policy_json=settings.mb_policy,
        clusters=[
            WatchedCluster(
                name=host.host_name,
                api_server=host.api_server,
                provider=host.provider,
                agent_namespace_ready=host.daemon_set,
                deleted_with=host.machine,
            )
            for host in agent_hosts
        ],
        uid=settings.agent_uid,
        gid=settings.agent_gid,
        taint_effect=settings.taint_effect,
        # swtpm: the CA the program signs every software TPM's EK with. hwtpm: the host's swtpm local CA, which
        # signed the vTPM's EK certificate, read from the libvirt host once the VM exists.
        ek_trust_pem=(
            None if not settings.require_ek_cert
            else pki.tpm_manufacturer_ca.cert_pem if pki.tpm_manufacturer_ca is not None
            else next(host.ek_issuer_pem for host in agent_hosts if isinstance(host, VtpmVm))
        ),
        prometheus_operator=settings.prometheus_operator,
    ),
)

pulumi.export("tpmMode", settings.tpm_mode)
pulumi.export("infraCluster", infra.cluster_name)
pulumi.export("agentHosts", [host.host_name for host in agent_hosts])
pulumi.export("registrarEndpoint", dial(settings, "agent", "registrar").url)
pulumi.export("verifierEndpoint", dial(settings, "agent", "verifier").url)
pulumi.export("caCertificate", pki.ca_cert_pem)
pulumi.export("agentCount", agent_count(settings))
pulumi.export("tpmPolicy", settings.tpm_policy_json)
pulumi.export("mbPolicy", settings.mb_policy)
for host in agent_hosts:
    if isinstance(host, VtpmVm):
        pulumi.export("vmBootLog", host.boot_log)
pulumi.export("enrolledAgents", enrollment.enrolled)
pulumi.export("attestation", enrollment.attestation)
pulumi.export("infraKubeconfig", infra.kind.kubeconfig)
