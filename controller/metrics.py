"""Prometheus metrics, rendered from the last reconcile pass (an agent that is gone leaves no stale series)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .enrollment import STATUSES
from .fleet import GATING_STATES
from .reconcile import Outcome


class ControllerCollector(Collector):
    def __init__(self, last: Callable[[], Outcome | None]):
        self.last = last
        self.passes = 0
        self.failed_passes = 0

    def counted(self, outcome: Outcome) -> None:
        self.passes += 1
        self.failed_passes += bool(outcome.errors)

    def collect(self) -> Iterator:
        outcome = self.last()
        yield CounterMetricFamily("keylime_controller_reconciles", "Reconcile passes run", value=self.passes)
        yield CounterMetricFamily("keylime_controller_reconcile_errors", "Reconcile passes with an API error",
                                  value=self.failed_passes)
        if outcome is None:
            return
        snapshot, plan = outcome.snapshot, outcome.plan
        yield GaugeMetricFamily("keylime_controller_reconcile_seconds", "Duration of the last reconcile pass",
                                value=outcome.seconds)
        yield GaugeMetricFamily("keylime_controller_last_reconcile_timestamp_seconds", "End of the last reconcile pass",
                                value=outcome.finished_at)
        yield GaugeMetricFamily("keylime_registrar_up", "Whether the registrar answered the last pass",
                                value=float(snapshot.registered is not None))
        yield GaugeMetricFamily("keylime_verifier_up", "Whether the verifier answered the last pass",
                                value=float(snapshot.verifier is not None))
        reachable = GaugeMetricFamily("keylime_cluster_up", "Whether the agent cluster's API server answered",
                                      labels=["cluster"])
        for cluster, pods in sorted(snapshot.clusters.items()):
            reachable.add_metric([cluster], float(pods is not None))
        yield reachable
        running = sum(len(pods) for pods in snapshot.clusters.values() if pods)
        # After the pass: what it read, with what it enrolled and removed.
        counts = {
            "registered": len(snapshot.registered or ()) - sum(r.registrar for r in plan.remove),
            "enrolled": len(snapshot.verifier or {})
            + sum(not e.replace for e in plan.enroll)
            - sum(r.verifier for r in plan.remove),
            "running": running,
            "untrusted": sum(verdict.state in GATING_STATES for verdict in plan.nodes),
        }
        for name, value in counts.items():
            yield GaugeMetricFamily(f"keylime_agents_{name}", f"Agents {name}", value=value)
        status = GaugeMetricFamily(
            "keylime_agent_status", "1 for the agent's current attestation status", labels=["uuid", "node", "cluster", "status"]
        )
        count = GaugeMetricFamily(
            "keylime_agent_attestation_count", "Successful attestations since enrollment", labels=["uuid", "node", "cluster"]
        )
        last = GaugeMetricFamily(
            "keylime_agent_last_successful_attestation_timestamp_seconds",
            "When the agent last attested successfully (0: never)",
            labels=["uuid", "node", "cluster"],
        )
        for agent in plan.agents:
            labels = [agent.uuid, agent.node, agent.cluster]
            for candidate in STATUSES:
                status.add_metric([*labels, candidate], float(agent.status == candidate))
            count.add_metric(labels, agent.attestation_count)
            last.add_metric(labels, agent.last_success)
        yield status
        yield count
        yield last
        nodes = GaugeMetricFamily(
            "keylime_node_trust", "1 for the node's current attestation state", labels=["node", "cluster", "state"]
        )
        for verdict in plan.nodes:
            nodes.add_metric([verdict.pod.node, verdict.pod.cluster, verdict.state], 1.0)
        yield nodes
