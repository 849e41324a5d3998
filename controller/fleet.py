"""One reconcile decision, from one snapshot of keylime and Kubernetes: pure, so every rule is testable alone.

Desired set = agents that run. An agent pod runs on a node; the push agent registers with contact_ip = the
node's address (KEYLIME_AGENT_CONTACT_IP from the downward API's status.hostIP), which the registrar keeps
as `ip`. A registration is that node's agent when it is the only one claiming the node's address, or when
several do and exactly one of them is already enrolled for the node and PASSes; every other claim is never
trusted automatically. Nothing is removed, enrolled or gated on the strength of a failed API call.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from .ek import TrustStore
from .enrollment import FAIL, PASS, PENDING, TIMEOUT, Policies

REFUSED = "REFUSED"
UNREGISTERED = "UNREGISTERED"
NODE_STATES = (PASS, PENDING, FAIL, TIMEOUT, REFUSED, UNREGISTERED)
GATING_STATES = (FAIL, TIMEOUT, REFUSED)
"""The node is tainted in these; the taint comes off only on PASS."""


@dataclasses.dataclass(frozen=True)
class AgentPod:
    cluster: str
    node: str
    address: str
    """status.hostIP: the node address the agent registers as its contact_ip."""


@dataclasses.dataclass(frozen=True)
class Registration:
    uuid: str
    contact_ip: str | None
    ek_cert: str | None
    """base64 DER, as the registrar returns it."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an enrolled agent runs, kept in the verifier's metadata: a restart of the controller loses nothing."""

    cluster: str
    node: str
    address: str

    def metadata(self) -> dict[str, str]:
        return {"cluster": self.cluster, "node": self.node, "address": self.address}

    @classmethod
    def from_verifier(cls, record: Mapping[str, object]) -> Placement | None:
        try:
            # verifier JSON record: meta_data is a JSON string; TypeError is caught below
            meta = json.loads(record.get("meta_data") or "{}")  # type: ignore[arg-type]
            return cls(str(meta["cluster"]), str(meta["node"]), str(meta["address"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    registered: frozenset[str] | None
    """The registrar's agent list; None when the registrar did not answer."""
    registrations: Mapping[str, Registration]
    """Details of registered agents the verifier has no placement for (activated ones; others are not readable yet)."""
    verifier: Mapping[str, Mapping[str, object]] | None
    """The verifier's bulk status per agent; None when the verifier did not answer."""
    clusters: Mapping[str, tuple[AgentPod, ...] | None]
    """Running agent pods per agent cluster; None for a cluster whose API server did not answer."""


@dataclasses.dataclass(frozen=True)
class Enroll:
    uuid: str
    pod: AgentPod
    replace: bool
    """Enrolled with another policy: delete, then enroll."""


@dataclasses.dataclass(frozen=True)
class Remove:
    uuid: str
    registrar: bool
    verifier: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Refusal:
    uuid: str
    pod: AgentPod | None
    event_reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class NodeVerdict:
    pod: AgentPod
    state: str
    uuid: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class AgentView:
    uuid: str
    cluster: str
    node: str
    status: str
    attestation_count: int
    last_success: float


@dataclasses.dataclass
class Plan:
    enroll: list[Enroll] = dataclasses.field(default_factory=list)
    remove: list[Remove] = dataclasses.field(default_factory=list)
    refusals: list[Refusal] = dataclasses.field(default_factory=list)
    nodes: list[NodeVerdict] = dataclasses.field(default_factory=list)
    agents: list[AgentView] = dataclasses.field(default_factory=list)
    held_back: list[str] = dataclasses.field(default_factory=list)
    """Why parts of the decision were not taken this pass (an API that did not answer)."""


def plan(snapshot: Snapshot, policies: Policies, trust: TrustStore | None) -> Plan:
    """`trust` None: requireEkCert is false and any EK is accepted."""
    result = Plan()
    if snapshot.registered is None or snapshot.verifier is None:
        down = [name for name, value in (("registrar", snapshot.registered), ("verifier", snapshot.verifier)) if value is None]
        result.held_back.append(f"{' and '.join(down)} did not answer: no enrollment, removal or gating this pass")
        return result
    verifier, registered = snapshot.verifier, snapshot.registered
    placements = {uuid: Placement.from_verifier(record) for uuid, record in verifier.items()}
    unreachable = sorted(name for name, pods in snapshot.clusters.items() if pods is None)
    if unreachable:
        result.held_back.append(f"clusters {', '.join(unreachable)} did not answer: their agents keep their enrollment and "
                                "their nodes their state; registrations claiming no known node are not removed")

    def claim(uuid: str) -> str | None:
        placement = placements.get(uuid)
        if placement is not None:
            return placement.address
        registration = snapshot.registrations.get(uuid)
        return registration.contact_ip if registration else None

    pods = [pod for cluster_pods in snapshot.clusters.values() if cluster_pods for pod in cluster_pods]
    by_address: dict[str, list[AgentPod]] = {}
    for pod in pods:
        by_address.setdefault(pod.address, []).append(pod)
    claimants: dict[str, list[str]] = {}
    for uuid in sorted(registered):
        address = claim(uuid)
        if address is not None:
            claimants.setdefault(address, []).append(uuid)

    chosen: set[str] = set()
    for pod in sorted(pods, key=lambda p: (p.cluster, p.node)):
        verdict = _node(pod, claimants.get(pod.address, []), by_address[pod.address], verifier, placements, policies,
                        snapshot.registrations, trust, result)
        result.nodes.append(verdict)
        if verdict.uuid is not None:
            chosen.add(verdict.uuid)

    unreachable_clusters = set(unreachable)
    refused = {refusal.uuid for refusal in result.refusals}
    for uuid in sorted(registered | set(verifier)):
        if uuid in chosen or uuid in refused:
            continue
        placement = placements.get(uuid)
        if placement is not None and placement.cluster in unreachable_clusters:
            continue
        if uuid not in registered:
            result.remove.append(Remove(uuid, registrar=False, verifier=True,
                                        reason="enrolled at the verifier but no longer registered"))
            continue
        address = claim(uuid)
        if address is None:
            continue  # registered but not activated, or not read yet: not judged before it can be mapped
        if unreachable_clusters:
            continue
        where = f"{placement.cluster}/{placement.node} ({address})" if placement else address
        result.remove.append(Remove(uuid, registrar=True, verifier=uuid in verifier,
                                    reason=f"stale or rogue: claims {where}, where no agent pod runs"))

    running_on = {verdict.uuid: verdict.pod for verdict in result.nodes if verdict.uuid is not None}
    for uuid, record in sorted(verifier.items()):
        # AgentPod has the cluster and node read below, as Placement does
        placement = placements.get(uuid) or running_on.get(uuid)  # type: ignore[assignment]
        if placement is None:
            continue
        result.agents.append(AgentView(uuid, placement.cluster, placement.node, str(record.get("attestation_status")),
                                       # verifier JSON record: attestation_count is a number
                                       int(record.get("attestation_count") or 0),  # type: ignore[call-overload]
                                       # verifier JSON record: last_successful_attestation is a number
                                       float(record.get("last_successful_attestation") or 0)))  # type: ignore[arg-type]
    result.agents.extend(AgentView(e.uuid, e.pod.cluster, e.pod.node, PENDING, 0, 0.0) for e in result.enroll if not e.replace)
    result.agents.sort(key=lambda agent: agent.uuid)
    return result


def _node(pod: AgentPod, claims: list[str], sharing: list[AgentPod], verifier, placements, policies: Policies,
          registrations, trust: TrustStore | None, result: Plan) -> NodeVerdict:
    if len(sharing) > 1:
        names = ", ".join(f"{p.cluster}/{p.node}" for p in sharing)
        for uuid in claims:
            result.refusals.append(Refusal(uuid, pod, "AmbiguousAddress",
                                           f"agent {uuid} claims {pod.address}, which nodes {names} all have"))
        return NodeVerdict(pod, REFUSED, None, f"address {pod.address} is shared by {names}")
    if not claims:
        return NodeVerdict(pod, UNREGISTERED, None, f"no activated registration claims {pod.address}")
    if len(claims) == 1:
        (uuid,) = claims
    else:
        holders = [uuid for uuid in claims
                   if placements.get(uuid) == Placement(pod.cluster, pod.node, pod.address)
                   and verifier[uuid].get("attestation_status") == PASS]
        if len(holders) != 1:
            for uuid in claims:
                result.refusals.append(Refusal(
                    uuid, pod, "AmbiguousRegistration",
                    f"agents {', '.join(claims)} all claim node {pod.node} ({pod.address}) and none holds it by "
                    "attesting: none is trusted automatically; delete the registrations that are not this node's "
                    "agent (keylime_tenant -c regdelete -u <uuid>)"))
            return NodeVerdict(pod, REFUSED, None, f"{len(claims)} registrations claim {pod.address}")
        (uuid,) = holders
        for other in claims:
            if other != uuid:
                result.refusals.append(Refusal(
                    other, pod, "ConflictingRegistration",
                    f"agent {other} claims node {pod.node} ({pod.address}), which agent {uuid} holds and attests "
                    "from: removed from the registrar and the verifier"))
                result.remove.append(Remove(other, registrar=True, verifier=other in verifier,
                                            reason=f"claims {pod.node}, held by {uuid}"))
    record = verifier.get(uuid)
    # An agent the controller did not enroll itself (no placement: the deploy-time Command, or by hand) is checked too.
    if trust is not None and (record is None or placements.get(uuid) is None):
        untrusted = trust.untrusted_reason(registrations[uuid].ek_cert)
        if untrusted is not None:
            result.refusals.append(Refusal(uuid, pod, "UntrustedEK", f"agent {uuid} is not enrolled: {untrusted}"))
            if record is not None:
                result.remove.append(Remove(uuid, registrar=False, verifier=True, reason=f"enrolled, but {untrusted}"))
            return NodeVerdict(pod, REFUSED, uuid, untrusted)
    if record is None:
        result.enroll.append(Enroll(uuid, pod, replace=False))
        return NodeVerdict(pod, PENDING, uuid, "enrolling")
    outdated = policies.outdated(record)
    if outdated is not None:
        result.enroll.append(Enroll(uuid, pod, replace=True))
        return NodeVerdict(pod, PENDING, uuid, f"re-enrolling: {outdated}")
    status = str(record.get("attestation_status"))
    return NodeVerdict(pod, status if status in NODE_STATES else PENDING, uuid, _reason(status, record))


def _reason(status: str, record: Mapping[str, object]) -> str:
    if status == PASS:
        return f"attested {record.get('attestation_count')} times"
    if status == FAIL:
        return "attestation failed; FAIL is kept until the agent is re-enrolled (a policy change, or its verifier entry deleted)"
    if status == TIMEOUT:
        return f"no attestation within {record.get('maximum_attestation_interval')}: the agent is dead or cut off"
    return "enrolled, not attested yet"
