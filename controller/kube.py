"""The Kubernetes side, through the official client: agent pods and nodes listed in bulk, node gating, Events.

Per cluster and pass: one pod list, one node list, and writes only on a node's transition. A node's state is
kept on the node itself (a label), so the controller keeps no state of its own and a restart loses nothing.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client  # type: ignore[import-untyped]  # the kubernetes client ships no types
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]  # the kubernetes client ships no types
from urllib3.exceptions import HTTPError

from .backoff import Backoff, Transient
from .enrollment import PASS
from .fleet import GATING_STATES, AgentPod, NodeVerdict

DOMAIN = "attestation.keylime.dev"
STATUS_LABEL = f"{DOMAIN}/status"
TAINT_KEY = f"{DOMAIN}/untrusted"
CONDITION_TYPE = "KeylimeAttested"
EVENT_NAMESPACE = "default"
COMPONENT = "keylime-attestation-controller"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
EVENT_REASONS = {
    "PASS": "AttestationPassed",
    "PENDING": "AttestationPending",
    "FAIL": "AttestationFailed",
    "TIMEOUT": "AttestationTimedOut",
    "REFUSED": "AgentRefused",
    "UNREGISTERED": "AgentNotRegistered",
}


class Unreachable(RuntimeError):  # noqa: N818 (a state of the API server, as `except Unreachable` reads)
    """The cluster's API server did not answer after the retries."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_patch(node: Mapping[str, Any], verdict: NodeVerdict, effect: str) -> dict[str, Any] | None:
    """The strategic-merge patch that brings the node's label and taint to the verdict; None if nothing changes.

    The taint is set on FAIL, TIMEOUT and REFUSED, and comes off only on PASS: a node re-enrolling after a failure
    (PENDING) stays gated until it has proved itself again. spec.taints is an atomic list, so the whole list is
    sent, with the node's resourceVersion: a concurrent change of its taints makes the patch fail, not vanish.
    """
    metadata, spec = node.get("metadata") or {}, node.get("spec") or {}
    taints = [t for t in spec.get("taints") or [] if t.get("key") != TAINT_KEY]
    ours = [t for t in spec.get("taints") or [] if t.get("key") == TAINT_KEY]
    if verdict.state in GATING_STATES:
        ours = [{"key": TAINT_KEY, "value": verdict.state, "effect": effect}]
    elif verdict.state == PASS:
        ours = []
    wanted = taints + ours
    label_changes = (metadata.get("labels") or {}).get(STATUS_LABEL) != verdict.state
    if not label_changes and wanted == (spec.get("taints") or []):
        return None
    return {
        "metadata": {"labels": {STATUS_LABEL: verdict.state}, "resourceVersion": metadata.get("resourceVersion")},
        "spec": {"taints": wanted},
    }


def condition_patch(verdict: NodeVerdict) -> dict[str, Any]:
    status = "True" if verdict.state == PASS else "False" if verdict.state in GATING_STATES else "Unknown"
    stamp = now()
    return {"status": {"conditions": [{
        "type": CONDITION_TYPE, "status": status, "reason": EVENT_REASONS[verdict.state],
        "message": f"keylime agent {verdict.uuid or '(none)'}: {verdict.reason}"[:1024],
        "lastHeartbeatTime": stamp, "lastTransitionTime": stamp,
    }]}}


def node_event(node: Mapping[str, Any], reason: str, message: str, warning: bool) -> dict[str, Any]:
    name = node["metadata"]["name"]
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": EVENT_NAMESPACE},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"].get("uid")},
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class Cluster:
    """One agent cluster's API server, with the controller's narrow rights there (see the RBAC it is deployed with)."""

    def __init__(self, name: str, api_client: client.ApiClient, namespace: str, selector: str,
                 backoff: Backoff | None = None):
        self.name, self.namespace, self.selector = name, namespace, selector
        self.core = client.CoreV1Api(api_client)
        self.backoff = backoff or Backoff()

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def attempt() -> Any:
            try:
                return function(*args, **kwargs)
            except ApiException as error:
                if error.status is not None and error.status < 500 and error.status != 429:
                    raise
                raise Transient(f"cluster {self.name}: {what}: HTTP {error.status} {error.reason}") from None
            except (HTTPError, OSError) as error:
                raise Transient(f"cluster {self.name}: {what}: {error}") from None

        try:
            return self.backoff.run(attempt)
        except Transient as error:
            raise Unreachable(str(error)) from None

    def _list(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        # The raw JSON: building the client's model objects for a thousand nodes costs seconds, and only a few
        # fields are read.
        response = self._call(what, function, *args, _preload_content=False, **kwargs)
        return json.loads(response.data)["items"]

    def agent_pods(self) -> tuple[AgentPod, ...]:
        """Agent pods that run (phase Running, scheduled, with a host address, not being deleted)."""
        pods = self._list("list agent pods", self.core.list_namespaced_pod, self.namespace, label_selector=self.selector)
        running = []
        for pod in pods:
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            if (status.get("phase") == "Running" and spec.get("nodeName") and status.get("hostIP")
                    and not pod["metadata"].get("deletionTimestamp")):
                running.append(AgentPod(self.name, spec["nodeName"], status["hostIP"]))
        return tuple(sorted(running, key=lambda pod: pod.node))

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {node["metadata"]["name"]: node for node in self._list("list nodes", self.core.list_node)}

    def apply(self, node: Mapping[str, Any], verdict: NodeVerdict, effect: str, detail: str = "") -> bool:
        """Bring one node to its verdict: label and taint, the condition and an Event on a transition. True if it changed."""
        patch = node_patch(node, verdict, effect)
        if patch is None:
            return False
        name = node["metadata"]["name"]
        self._call("patch node", self.core.patch_node, name, patch)
        previous = ((node.get("metadata") or {}).get("labels") or {}).get(STATUS_LABEL)
        if previous != verdict.state:
            self._call("patch node status", self.core.patch_node_status, name, condition_patch(verdict))
            message = (f"{previous or 'unlabelled'} -> {verdict.state}: keylime agent {verdict.uuid or '(none)'}: "
                       f"{verdict.reason}{detail}")
            self.event(node, EVENT_REASONS[verdict.state], message, warning=verdict.state != PASS)
        return True

    def event(self, node: Mapping[str, Any], reason: str, message: str, warning: bool) -> None:
        self._call("create event", self.core.create_namespaced_event, EVENT_NAMESPACE,
                   node_event(node, reason, message, warning))
