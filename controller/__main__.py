"""The controller's entry point.

    python -m controller run     reconcile every INTERVAL_SECONDS, serve /metrics on METRICS_PORT
    python -m controller check   reconcile until every running agent is PASS (exit 0), or until WAIT_SECONDS
                                 have passed (exit 1, one line per node that is not, with its agent and why)

Configuration (environment; files come from mounted ConfigMaps and Secrets):
  REGISTRAR_URL, VERIFIER_URL     https://host:port of the registrar's TLS port and of the verifier
  KEYLIME_CA, CLIENT_CERT, CLIENT_KEY   the CA the servers' certificates chain to; the controller's client certificate
  POLICY_FILE                     the stack's TPM policy (JSON), re-read every pass: a change re-enrolls every agent
  MB_POLICY_FILE                  optional; the measured-boot reference state (JSON; an empty file: none), re-read
                                  every pass like POLICY_FILE
  EK_TRUST_DIR                    optional; set: requireEkCert, only EKs signed by a CA in this directory are enrolled
  CLUSTERS_FILE                   JSON {"<cluster>": "<kubeconfig path>" | "in-cluster"}
  AGENT_NAMESPACE, AGENT_SELECTOR where the agent DaemonSet's pods are (default keylime, app.kubernetes.io/name=keylime-agent)
  TAINT_EFFECT                    NoSchedule (default), PreferNoSchedule or NoExecute
  INTERVAL_SECONDS (default 10), METRICS_PORT (default 9090), WAIT_SECONDS (check, default 180)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from kubernetes import client as kube_client  # type: ignore[import-untyped]  # the kubernetes client ships no types
from kubernetes import config as kube_config

from .ek import TrustStore
from .enrollment import PASS, Policies
from .keylime import Registrar, Tls, Verifier
from .kube import TAINT_EFFECTS, Cluster
from .reconcile import Controller, Outcome

USAGE = "usage: python -m controller run|check"


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Config:
    registrar_url: str
    verifier_url: str
    tls: Tls
    policy_file: Path
    mb_policy_file: Path | None
    ek_trust_dir: Path | None
    clusters: dict[str, str]
    namespace: str
    selector: str
    taint_effect: str
    interval: float
    metrics_port: int
    wait: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        problems = []

        def need(key: str) -> str:
            value = env.get(key, "")
            if not value:
                problems.append(f"{key}: required")
            return value

        def number(key: str, default: str, kind=float):
            try:
                value = kind(env.get(key, default))
                if value <= 0:
                    raise ValueError
                return value
            except ValueError:
                problems.append(f"{key}: got {env.get(key)!r}; allowed: a positive number")
                return kind(default)

        effect = env.get("TAINT_EFFECT", "NoSchedule")
        if effect not in TAINT_EFFECTS:
            problems.append(f"TAINT_EFFECT: got {effect!r}; allowed: {', '.join(TAINT_EFFECTS)}")
        clusters: dict[str, str] = {}
        clusters_file = need("CLUSTERS_FILE")
        if clusters_file:
            try:
                clusters = json.loads(Path(clusters_file).read_text())
                if not isinstance(clusters, dict) or not clusters:
                    raise ValueError("not a non-empty JSON object")
            except (OSError, ValueError) as error:
                problems.append(f"CLUSTERS_FILE: {clusters_file}: {error}")
                clusters = {}
        config = cls(
            registrar_url=need("REGISTRAR_URL"), verifier_url=need("VERIFIER_URL"),
            tls=Tls(need("KEYLIME_CA"), need("CLIENT_CERT"), need("CLIENT_KEY")),
            policy_file=Path(need("POLICY_FILE")),
            mb_policy_file=Path(env["MB_POLICY_FILE"]) if env.get("MB_POLICY_FILE") else None,
            ek_trust_dir=Path(env["EK_TRUST_DIR"]) if env.get("EK_TRUST_DIR") else None,
            clusters=clusters, namespace=env.get("AGENT_NAMESPACE", "keylime"),
            selector=env.get("AGENT_SELECTOR", "app.kubernetes.io/name=keylime-agent"), taint_effect=effect,
            interval=number("INTERVAL_SECONDS", "10"), metrics_port=number("METRICS_PORT", "9090", int),
            wait=number("WAIT_SECONDS", "180"),
        )
        if problems:
            raise ConfigError("controller configuration:\n  " + "\n  ".join(problems))
        return config


def api_client(kubeconfig: str) -> kube_client.ApiClient:
    if kubeconfig == "in-cluster":
        configuration = kube_client.Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)
        return kube_client.ApiClient(configuration)
    return kube_config.new_client_from_config(config_file=kubeconfig)


def build(config: Config) -> Controller:
    clusters = {name: Cluster(name, api_client(path), config.namespace, config.selector)
                for name, path in sorted(config.clusters.items())}
    trust = TrustStore.load(config.ek_trust_dir) if config.ek_trust_dir else None

    def policies() -> Policies:
        mb_policy = config.mb_policy_file.read_text() if config.mb_policy_file else ""
        return Policies.parse(config.policy_file.read_text(), mb_policy)

    return Controller(Registrar(config.registrar_url, config.tls), Verifier(config.verifier_url, config.tls), clusters,
                      policies, trust, config.taint_effect)


def not_passing(outcome: Outcome) -> list[str]:
    """One line per running agent's node that is not PASS, and every reason the pass could not judge them all."""
    lines = [f"{verdict.pod.cluster}/{verdict.pod.node}: agent {verdict.uuid or '(none)'}: {verdict.state}: {verdict.reason}"
             for verdict in outcome.plan.nodes if verdict.state != PASS]
    return lines + outcome.plan.held_back + outcome.errors


def check(controller: Controller, wait: float, poll: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        outcome = controller.reconcile()
        problems = not_passing(outcome)
        if not problems:
            print(json.dumps({"agents": [{"uuid": a.uuid, "node": a.node, "cluster": a.cluster, "status": a.status,
                                          "attestation_count": a.attestation_count} for a in outcome.plan.agents]}))
            return 0
        if time.monotonic() >= deadline:
            print(f"not every running agent is PASS after {wait:.0f} s:\n" + "\n".join(problems), file=sys.stderr)
            return 1
        time.sleep(poll)


def run(controller: Controller, config: Config) -> None:
    from prometheus_client import REGISTRY, start_http_server

    from .metrics import ControllerCollector

    collector = ControllerCollector(lambda: controller.last)
    REGISTRY.register(collector)
    start_http_server(config.metrics_port)
    while True:
        collector.counted(controller.reconcile())
        time.sleep(config.interval)


def main(argv: list[str], env: Mapping[str, str]) -> int:
    if len(argv) != 2 or argv[1] not in ("run", "check"):
        print(USAGE, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = Config.from_env(env)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    controller = build(config)
    if argv[1] == "check":
        return check(controller, config.wait, min(config.interval, 5))
    run(controller, config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv, os.environ))
