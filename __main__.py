"""keylime-push: Keylime push-model attestation on Kind clusters (swtpm), a vTPM VM (hwtpm) or your clusters (cluster).

    settings -> PKI + images (start at once) -> servers' cluster | agent clusters (in parallel)
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
from components.existing_cluster import ExistingAgentCluster, ExistingAgentClusterArgs
from components.images import CONTROLLER, SERVER_COMPONENTS, KeylimeImages, KeylimeImagesArgs, LocalClones
from components.infra_cluster import InfraCluster, InfraClusterArgs, InfraHost
from components.keylime_conf import agent_count
from components.keylime_servers import Exposure, NodePorts, ServerCertificates
from components.pki import KeylimePki, KeylimePkiArgs
from components.server_cluster import ServerCluster, ServerClusterArgs
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
        registry=settings.image_registry,
    ),
    local,
)
# cluster: the user's kubeconfig, every context the program deploys to; a secret from here on.
user_kubeconfig = pulumi.Output.secret(settings.kubeconfig.get_secret_value()) if settings.kubeconfig else None

agent = AgentPodArgs(
    image=images.image("agent"),
    agent_conf=keylime_conf.agent_conf(settings),
    uid=settings.agent_uid,
    gid=settings.agent_gid,
    ca_cert_pem=pki.ca_cert_pem,
    measured_boot=bool(settings.mb_policy),
)
server_configs = {
    "registrar": keylime_conf.registrar_conf(settings),
    "verifier": keylime_conf.verifier_conf(settings),
    "tenant": keylime_conf.tenant_conf(settings),
}
server_certificates = ServerCertificates(
    ca_cert_pem=pki.ca_cert_pem,
    registrar=pki.servers["registrar"],
    verifier=pki.servers["verifier"],
    verifier_client=pki.clients["verifier-client"],
    tenant=pki.clients["tenant"],
)
infra_images = {component: images.image(component) for component in (*SERVER_COMPONENTS, CONTROLLER)}


def agents_on_kind() -> list[AgentHost]:
    return [
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


def agents_in_a_vm() -> list[AgentHost]:
    return [
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


def servers_on_kind(agent_hosts: list[AgentHost]) -> InfraCluster:
    return InfraCluster(
        "infra",
        InfraClusterArgs(
            cluster_name=infra_cluster_name(settings),
            owner=cluster_owner,
            images=infra_images,
            configs=server_configs,
            certificates=server_certificates,
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


def servers_on_your_cluster() -> ServerCluster:
    # Every cluster key is set (or defaulted) once tpmMode=cluster validated.
    assert user_kubeconfig is not None and settings.server_context is not None and settings.service_type is not None
    assert settings.registrar_replicas is not None and settings.verifier_replicas is not None
    assert settings.postgres_storage_class is not None and settings.postgres_storage is not None
    return ServerCluster(
        "servers",
        ServerClusterArgs(
            kubeconfig=user_kubeconfig,
            context=settings.server_context,
            api_server=settings.api_server(settings.server_context),
            images=infra_images,
            configs=server_configs,
            certificates=server_certificates,
            uid=settings.agent_uid,
            gid=settings.agent_gid,
            exposure=Exposure(
                settings.service_type,
                NodePorts(settings.registrar_node_port, settings.registrar_tls_node_port, settings.verifier_node_port)
                if settings.service_type == "NodePort"
                else None,
                pin_agents=True,
            ),
            registrar_replicas=settings.registrar_replicas,
            verifier_replicas=settings.verifier_replicas,
            storage_class=settings.postgres_storage_class,
            storage_size=settings.postgres_storage,
            database_url=(
                pulumi.Output.secret(settings.database_url.get_secret_value())
                if settings.database_url is not None and settings.database_url.get_secret_value()
                else None
            ),
        ),
        local,
    )


def agents_on_your_clusters(servers: ServerCluster) -> list[AgentHost]:
    assert user_kubeconfig is not None and settings.agent_node_label is not None, "validated by load_settings"
    label_key, label_value = settings.agent_node_label
    return [
        ExistingAgentCluster(
            f"agents-{context}",
            ExistingAgentClusterArgs(
                kubeconfig=user_kubeconfig,
                context=context,
                api_server=settings.api_server(context),
                agent=agent,
                node_selector={label_key: label_value},
                servers_namespace=servers.namespace if context == settings.server_context else None,
            ),
            local,
        )
        for context in settings.agent_context_names
    ]


def ek_trust_store() -> pulumi.Input[str] | None:
    """The CAs the controller accepts EK certificates from. swtpm: the one the program signs every software TPM's
    EK with. hwtpm: the host's swtpm local CA, which signed the vTPM's, read from the libvirt host once the VM
    exists. cluster: the TPM manufacturers' CAs the user gave."""
    if not settings.require_ek_cert:
        return None
    if settings.tpm_mode == "cluster":
        return settings.ek_trust_bundle
    if pki.tpm_manufacturer_ca is not None:
        return pki.tpm_manufacturer_ca.cert_pem
    return next(host.ek_issuer_pem for host in agent_hosts if isinstance(host, VtpmVm))


infra: InfraHost
agent_hosts: list[AgentHost]
if settings.tpm_mode == "cluster":
    infra = servers_on_your_cluster()
    agent_hosts = agents_on_your_clusters(infra)
else:
    agent_hosts = agents_on_kind() if settings.tpm_mode == "swtpm" else agents_in_a_vm()
    infra = servers_on_kind(agent_hosts)

enrollment = Enrollment(
    "enrollment",
    EnrollmentArgs(
        tpm_policy_json=settings.tpm_policy_json,
        mb_policy_json=settings.mb_policy,
        expected_agents=agent_count(settings),
        infra_kubeconfig=infra.kubeconfig,
        infra_context=infra.context,
        cluster_ids=[infra.identity, *(host.identity for host in agent_hosts)],
        ready=[*infra.workloads, *(host.daemon_set for host in agent_hosts)],
    ),
    local,
)

controller = AttestationController(
    "controller",
    AttestationControllerArgs(
        image=images.image(CONTROLLER).ref,
        infra_provider=infra.provider,
        # It takes over from the deploy-time enrollment: on a new policy, enroll.py re-enrolls first and the
        # controller reads the new policy only then, so the two never act on the same agent at once. It does not
        # wait for the verification: a node that fails it is exactly one the controller must gate.
        infra_ready=[infra.namespace, *infra.images_ready, enrollment.enroll],
        infra_cluster=infra.machine,
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
        ek_trust_pem=ek_trust_store(),
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
pulumi.export("infraKubeconfig", infra.kubeconfig)
pulumi.export("infraContext", infra.context)
