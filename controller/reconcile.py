"""One reconcile pass: read keylime, then Kubernetes; decide (fleet.plan); act; publish what was seen.

keylime is read before Kubernetes on purpose: an agent registers only once its pod runs on a node, so every
registration in the keylime snapshot has its pod in the later pod list, and a fresh agent is never taken
for a rogue one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from .ek import TrustStore
from .enrollment import Policies
from .fleet import Plan, Registration, Snapshot, plan
from .keylime import Registrar, Unavailable, Verifier
from .kube import Cluster, Unreachable

log = logging.getLogger("keylime-controller")
# An agent activates within a second of registering: a registration still not activated is looked at again after
# 5 s (a pass may fall between registration and activation), then after twice as long each time, up to 5 minutes.
UNREADABLE_FIRST_RETRY, UNREADABLE_LAST_RETRY = 5.0, 300.0


@dataclasses.dataclass
class Outcome:
    snapshot: Snapshot
    plan: Plan
    errors: list[str]
    seconds: float
    finished_at: float


class Controller:
    def __init__(self, registrar: Registrar, verifier: Verifier, clusters: Mapping[str, Cluster],
                 policies: Callable[[], Policies], trust: TrustStore | None, taint_effect: str = "NoSchedule"):
        self.registrar, self.verifier, self.clusters = registrar, verifier, dict(clusters)
        self.policies, self.trust, self.taint_effect = policies, trust, taint_effect
        # Registrations are immutable per UUID since keylime 7.14 (a changed TPM identity is refused), so what was
        # read once is kept; a restart only costs reading them again.
        self.registrations: dict[str, Registration] = {}
        self.aik: dict[str, str] = {}
        # Registrations the registrar lists but will not show (not activated, 404): asked again only after a while,
        # so that a heap of never-activated registrations cannot make every pass cost a call each.
        self.unreadable_until: dict[str, tuple[float, float]] = {}
        self.clock = time.monotonic
        self.last: Outcome | None = None

    # --- read -----------------------------------------------------------------------------------

    def snapshot(self, errors: list[str]) -> tuple[Snapshot, dict[str, dict]]:
        registered = verifier = None
        try:
            registered = self.registrar.agent_ids()
        except Unavailable as error:
            errors.append(f"registrar: {error}")
        try:
            verifier = self.verifier.agents()
        except Unavailable as error:
            errors.append(f"verifier: {error}")
        if registered is not None:
            for gone in set(self.registrations) - registered:
                self.registrations.pop(gone)
                self.aik.pop(gone, None)
            for gone in set(self.unreadable_until) - registered:
                self.unreadable_until.pop(gone)
            placed = {uuid for uuid, record in (verifier or {}).items() if '"address"' in str(record.get("meta_data") or "")}
            now = self.clock()
            for uuid in sorted(registered - placed - set(self.registrations)):
                if self.unreadable_until.get(uuid, (0.0, 0.0))[0] <= now:
                    self._read_registration(uuid, errors)
        pods: dict[str, tuple | None] = {}
        nodes: dict[str, dict] = {}
        for name, cluster in self.clusters.items():
            try:
                pods[name] = cluster.agent_pods()
                nodes[name] = cluster.nodes()
            except Unreachable as error:
                errors.append(str(error))
                pods[name] = None
        return Snapshot(registered, dict(self.registrations), verifier, pods), nodes

    def _read_registration(self, uuid: str, errors: list[str]) -> Registration | None:
        try:
            record = self.registrar.agent(uuid)
        except Unavailable as error:
            errors.append(f"registrar: {error}")
            return None
        if record is None:
            previous = self.unreadable_until.get(uuid, (0.0, UNREADABLE_FIRST_RETRY / 2))[1]
            delay = min(previous * 2, UNREADABLE_LAST_RETRY)
            self.unreadable_until[uuid] = (self.clock() + delay, delay)
            return None
        self.unreadable_until.pop(uuid, None)
        registration = Registration(uuid, record.get("ip") or None, record.get("ekcert") or None)
        self.registrations[uuid] = registration
        self.aik[uuid] = record["aik_tpm"]
        return registration

    # --- act ------------------------------------------------------------------------------------

    def reconcile(self) -> Outcome:
        started = time.monotonic()
        errors: list[str] = []
        snapshot, nodes = self.snapshot(errors)
        policies = self.policies()
        decision = plan(snapshot, policies, self.trust)
        for note in decision.held_back:
            log.warning("%s", note)
        for removal in decision.remove:
            log.info("removing %s: %s", removal.uuid, removal.reason)
            try:
                if removal.verifier:
                    self.verifier.delete(removal.uuid)
                if removal.registrar:
                    self.registrar.delete(removal.uuid)
                    self.registrations.pop(removal.uuid, None)
            except Unavailable as error:
                errors.append(f"remove {removal.uuid}: {error}")
        for enrollment in decision.enroll:
            pod = enrollment.pod
            log.info("%s %s on %s/%s", "re-enrolling" if enrollment.replace else "enrolling", enrollment.uuid,
                     pod.cluster, pod.node)
            try:
                if enrollment.uuid not in self.aik and self._read_registration(enrollment.uuid, errors) is None:
                    continue
                if enrollment.replace:
                    self.verifier.delete(enrollment.uuid)
                self.verifier.enroll(enrollment.uuid, self.aik[enrollment.uuid], policies,
                                     {"cluster": pod.cluster, "node": pod.node, "address": pod.address})
            except Unavailable as error:
                errors.append(f"enroll {enrollment.uuid}: {error}")
        self._gate(decision, nodes, errors)
        for problem in errors:
            log.warning("%s", problem)
        self.last = Outcome(snapshot, decision, errors, time.monotonic() - started, time.time())
        return self.last

    def _gate(self, decision: Plan, nodes: Mapping[str, Mapping[str, dict]], errors: list[str]) -> None:
        refusals: dict[tuple[str, str], list[str]] = {}
        for refusal in decision.refusals:
            if refusal.pod is not None:
                refusals.setdefault((refusal.pod.cluster, refusal.pod.node), []).append(refusal.message)
        for verdict in decision.nodes:
            cluster = self.clusters[verdict.pod.cluster]
            node = nodes.get(verdict.pod.cluster, {}).get(verdict.pod.node)
            if node is None:
                continue
            detail = "".join(f"; {message}" for message in refusals.get((verdict.pod.cluster, verdict.pod.node), []))
            try:
                cluster.apply(node, verdict, self.taint_effect, detail)
            except Unreachable as error:
                errors.append(str(error))
            except Exception as error:  # noqa: BLE001 - one node's refusal (a 409 on a stale resourceVersion) must not stop the others
                errors.append(f"cluster {cluster.name}: node {verdict.pod.node}: {error}")
        for refusal in decision.refusals:
            if refusal.event_reason != "ConflictingRegistration" or refusal.pod is None:
                continue
            node = nodes.get(refusal.pod.cluster, {}).get(refusal.pod.node)
            if node is not None:
                try:
                    self.clusters[refusal.pod.cluster].event(node, refusal.event_reason, refusal.message, warning=True)
                except Unreachable as error:
                    errors.append(str(error))
