"""Enrollment: agents enrolled through the tenant with the TPM policy, then verified attesting."""

from __future__ import annotations

import dataclasses

import pulumi
import pulumi_command as command

ENROLL_SCRIPT = "components/scripts/enroll.py"
REGISTRATION_WAIT_SECONDS = 300
ATTESTATION_WAIT_SECONDS = 180


@dataclasses.dataclass
class EnrollmentArgs:
    tpm_policy_json: str
    """What the agents are enrolled with, as keylime_tenant --tpm_policy takes it."""
    expected_agents: int
    infra_kubeconfig: pulumi.Output[str]
    cluster_ids: list[pulumi.Output[str]]
    """The Kind clusters' Command ids: a new cluster means new agents, enrolled afresh."""
    ready: list[pulumi.Resource]
    """What must exist first: the tenant and servers, and every agent DaemonSet."""
    mb_policy_json: str = ""
    """The measured-boot reference state they are enrolled with too (keylime_tenant --mb-policy); empty: none."""
    infra_context: str = ""
    """The context of infra_kubeconfig the servers are in (the cluster stack's kubeconfig has several); empty: its current one."""


class Enrollment(pulumi.ComponentResource):
    enroll: command.local.Command
    """The step that acts on keylime (verify only reads)."""
    enrolled: pulumi.Output[str]
    attestation: pulumi.Output[str]

    def __init__(self, name: str, args: EnrollmentArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:enrollment:Enrollment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        access = {
            "KUBECONFIG_DATA": args.infra_kubeconfig,
            "KUBE_CONTEXT": args.infra_context,
            "EXPECTED_AGENTS": str(args.expected_agents),
        }
        self.enroll = enroll = command.local.Command(
            f"{name}-enroll",
            create=f"{ENROLL_SCRIPT} add",
            # A changed TPM policy reaches the script through its environment and re-enrolls every agent.
            update=f"{ENROLL_SCRIPT} update",
            # Runs while the infra cluster still exists: this resource depends on its tenant.
            delete=f"{ENROLL_SCRIPT} delete",
            environment={
                **access,  # type: ignore[dict-item]  # access holds str and Output[str] values only
                "TPM_POLICY": args.tpm_policy_json,
                "MB_POLICY": args.mb_policy_json,
                "WAIT_SECONDS": str(REGISTRATION_WAIT_SECONDS),
            },
            triggers=args.cluster_ids,
            logging=command.local.Logging.STDERR,
            opts=pulumi.ResourceOptions.merge(
                child,
                # Replacing means new clusters: remove the old enrollments before enrolling the new agents.
                pulumi.ResourceOptions(depends_on=args.ready, delete_before_replace=True),
            ),
        )
        # The kubeconfig in the environment makes stdout secret; the agent list itself is not.
        self.enrolled = pulumi.Output.unsecret(enroll.stdout)
        verify = command.local.Command(
            f"{name}-verify",
            create=f"{ENROLL_SCRIPT} verify",
            update=f"{ENROLL_SCRIPT} verify",
            # Re-verifies exactly when the enrolled set or its policy changed.
            # access holds str and Output[str] values only
            environment={**access, "ENROLLED": self.enrolled, "TPM_POLICY": args.tpm_policy_json,  # type: ignore[dict-item]
                         "MB_POLICY": args.mb_policy_json, "WAIT_SECONDS": str(ATTESTATION_WAIT_SECONDS)},
            logging=command.local.Logging.STDERR,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[enroll])),
        )
        self.attestation = pulumi.Output.unsecret(verify.stdout)
        self.register_outputs({"enrolled": self.enrolled, "attestation": self.attestation})
