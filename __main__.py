"""keylime-push: Keylime push-model attestation on Kind clusters (swtpm) or a vTPM VM (hwtpm).

    settings -> PKI + images (start at once) -> infra cluster | agent clusters (in parallel) -> enrollment
"""

import pulumi
import pulumi_command as command
import pulumi_docker as docker
import pulumi_tls as tls

from components.agent_cluster import AgentCluster, AgentClusterArgs
from components.endpoints import INFRA_CLUSTER, SERVERS, dial, server_sans
from components.enrollment import Enrollment, EnrollmentArgs
from components.images import KeylimeImages, KeylimeImagesArgs
from components.infra_cluster import InfraCluster, InfraClusterArgs
from components.keylime_conf import agent_count
from components.pki import KeylimePki, KeylimePkiArgs
from components.settings import load_settings
from components.vtpm_vm import VtpmVm, VtpmVmArgs

settings = load_settings()

# Default providers are disabled (Pulumi.yaml): every provider is declared here, once.
tls_provider = tls.Provider("tls")
command_provider = command.Provider("command")
docker_provider = docker.Provider("docker")
local = pulumi.ResourceOptions(providers=[command_provider, docker_provider])
local_and_tls = pulumi.ResourceOptions(providers=[command_provider, docker_provider, tls_provider])

pki = KeylimePki(
    "pki",
    KeylimePkiArgs(server_sans={server: server_sans(settings, server) for server in SERVERS}),
    pulumi.ResourceOptions(providers=[tls_provider]),
)
images = KeylimeImages("images", KeylimeImagesArgs(settings), local)
infra = InfraCluster("infra", InfraClusterArgs(settings, pki, images), local)

agent_hosts: list[AgentCluster | VtpmVm] = (
    [
        AgentCluster(f"agents-{index}", AgentClusterArgs(settings, index, pki.ca_cert_pem, images), local)
        for index in range(1, settings.agent_clusters + 1)
    ]
    if settings.tpm_mode == "swtpm"
    else [VtpmVm("vm", VtpmVmArgs(settings, pki.ca_cert_pem, images), local_and_tls)]
)

enrollment = Enrollment(
    "enrollment",
    EnrollmentArgs(
        settings=settings,
        expected_agents=agent_count(settings),
        infra_kubeconfig=infra.kind.kubeconfig,
        cluster_ids=[infra.kind.cluster.id, *(host.identity for host in agent_hosts)],
        ready=[*infra.workloads, *(host.daemon_set for host in agent_hosts)],
    ),
    local,
)

pulumi.export("tpmMode", settings.tpm_mode)
pulumi.export("infraCluster", INFRA_CLUSTER)
pulumi.export("agentHosts", [host.host_name for host in agent_hosts])
pulumi.export("registrarEndpoint", dial(settings, "agent", "registrar").url)
pulumi.export("verifierEndpoint", dial(settings, "agent", "verifier").url)
pulumi.export("caCertificate", pki.ca_cert_pem)
pulumi.export("agentCount", agent_count(settings))
pulumi.export("tpmPolicy", settings.tpm_policy_json)
pulumi.export("enrolledAgents", enrollment.enrolled)
pulumi.export("attestation", enrollment.attestation)
pulumi.export("infraKubeconfig", infra.kind.kubeconfig)
