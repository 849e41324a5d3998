"""A stand-in for an agent cluster's API server: the few endpoints the attestation controller uses, over HTTP,
so the controller runs with the real `kubernetes` client against it.

It holds nodes and pods, applies the controller's patches the way the API server does (strategic merge: labels
merged, `spec.taints` replaced as the atomic list it is, `status.conditions` merged by type; a stale
resourceVersion is a 409), keeps every object it was sent or that a patch produced (`written`, for schema
validation), counts calls by endpoint, and can be taken down (`down = True`: every call answers 503).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


def node(name: str, address: str, taints: list[dict] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1", "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints or []},
        "status": {"addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                                   "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }


def agent_pod(name: str, namespace: str, node_name: str, address: str, labels: dict[str, str],
              phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": dict(labels)},
        "spec": {"nodeName": node_name, "containers": [{"name": "agent", "image": "keylime-push/agent:test"}]},
        "status": {"phase": phase, "hostIP": address, "podIP": "10.244.0.5", "startTime": "2026-01-01T00:00:00Z"},
    }


class FakeKubernetes:
    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.events: list[dict] = []
        self.written: list[dict] = []
        self.calls: Counter[str] = Counter()
        self.down = False
        self._lock = threading.Lock()
        self._versions = itertools.count(2)
        self._names = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- state ------------------------------------------------------------------------------------

    def add_node(self, name: str, address: str) -> None:
        self.nodes[name] = node(name, address)

    def add_pod(self, name: str, namespace: str, node_name: str, labels: dict[str, str], phase: str = "Running") -> None:
        address = next(a["address"] for a in self.nodes[node_name]["status"]["addresses"] if a["type"] == "InternalIP")
        self.pods[(namespace, name)] = agent_pod(name, namespace, node_name, address, labels, phase)

    def remove_pod(self, name: str, namespace: str) -> None:
        del self.pods[(namespace, name)]

    def taints(self, name: str) -> list[dict]:
        return self.nodes[name]["spec"].get("taints") or []

    def label(self, name: str, key: str) -> str | None:
        return self.nodes[name]["metadata"].get("labels", {}).get(key)

    def condition(self, name: str, kind: str) -> dict | None:
        return next((c for c in self.nodes[name]["status"].get("conditions", []) if c["type"] == kind), None)

    # --- the API ----------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")

            def _route(self, method: str) -> None:
                path, _, query = self.path.partition("?")
                with fake._lock:
                    if fake.down:
                        fake.calls["unavailable"] += 1
                        return self._send(
                            503, {"kind": "Status", "status": "Failure", "code": 503, "reason": "ServiceUnavailable"}
                        )
                    status, body = fake.dispatch(
                        method,
                        path,
                        query,
                        self._body() if method in ("PATCH", "POST") else None,
                        self.headers.get("Content-Type", ""),
                    )
                self._send(status, body)

            def do_GET(self) -> None:
                self._route("GET")

            def do_PATCH(self) -> None:
                self._route("PATCH")

            def do_POST(self) -> None:
                self._route("POST")

        return Handler

    def dispatch(self, method: str, path: str, query: str, body: Any, content_type: str) -> tuple[int, dict]:
        if method == "GET" and path == "/api/v1/nodes":
            self.calls["list nodes"] += 1
            return 200, {
                "apiVersion": "v1",
                "kind": "NodeList",
                "metadata": {"resourceVersion": "1"},
                "items": [copy.deepcopy(n) for _, n in sorted(self.nodes.items())],
            }
        if method == "GET" and (match := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)):
            self.calls["list pods"] += 1
            selectors = parse_qs(query).get("labelSelector", [""])[0]
            selector = dict(term.split("=", 1) for term in selectors.split(",") if term)
            items = [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self.pods.items())
                if ns == match.group(1) and all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())
            ]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}
        if method == "PATCH" and (match := re.fullmatch(r"/api/v1/nodes/([^/]+)(/status)?", path)):
            if content_type != "application/strategic-merge-patch+json":
                return 415, {"kind": "Status", "code": 415, "message": f"unexpected patch type {content_type}"}
            name, status_only = match.group(1), bool(match.group(2))
            self.calls["patch node status" if status_only else "patch node"] += 1
            if name not in self.nodes:
                return 404, {"kind": "Status", "code": 404}
            return self._patch_node(name, body, status_only)
        if method == "POST" and (match := re.fullmatch(r"/api/v1/namespaces/([^/]+)/events", path)):
            self.calls["create event"] += 1
            event = copy.deepcopy(body)
            event["metadata"]["name"] = f"{event['metadata'].pop('generateName', 'event.')}{next(self._names):05d}"
            event["metadata"]["namespace"] = match.group(1)
            self.events.append(event)
            self.written.append(event)
            return 201, event
        return 404, {"kind": "Status", "code": 404, "message": f"the fake has no {method} {path}"}

    def _patch_node(self, name: str, patch: dict, status_only: bool) -> tuple[int, dict]:
        current = self.nodes[name]
        updated = copy.deepcopy(current)
        if status_only:
            unexpected = set(patch) - {"status"}
            if unexpected:
                return 422, {"kind": "Status", "code": 422, "message": f"a status patch with {sorted(unexpected)}"}
            conditions = {c["type"]: c for c in updated["status"].get("conditions", [])}
            for condition in patch["status"].get("conditions", []):
                conditions[condition["type"]] = {**conditions.get(condition["type"], {}), **condition}
            updated["status"]["conditions"] = list(conditions.values())
        else:
            unexpected = set(patch) - {"metadata", "spec"}
            if unexpected:
                return 422, {"kind": "Status", "code": 422, "message": f"a node patch with {sorted(unexpected)}"}
            metadata = patch.get("metadata", {})
            version = metadata.get("resourceVersion")
            if version is not None and version != current["metadata"]["resourceVersion"]:
                return 409, {"kind": "Status", "code": 409, "reason": "Conflict"}
            for key, value in (metadata.get("labels") or {}).items():
                if value is None:
                    updated["metadata"]["labels"].pop(key, None)
                else:
                    updated["metadata"]["labels"][key] = value
            if "taints" in patch.get("spec", {}):
                updated["spec"]["taints"] = patch["spec"]["taints"]  # atomic list: replaced
        updated["metadata"]["resourceVersion"] = str(next(self._versions))
        self.nodes[name] = updated
        self.written.append(copy.deepcopy(updated))
        return 200, updated
