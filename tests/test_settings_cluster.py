"""The cluster stack's keys: contexts that exist, an address that can be a SAN, secrets never quoted back."""

from __future__ import annotations

import pytest
from helpers import problems_for, settings_for

from components import endpoints, keylime_conf
from components.settings import SECRET_SHOWN
from tools.example import CLUSTER, cluster_config
from tools.offline import Secret


def _example_kubeconfig() -> Secret:
    kubeconfig = CLUSTER["kubeconfig"]
    assert isinstance(kubeconfig, Secret)
    return kubeconfig


KUBECONFIG = _example_kubeconfig()


def test_the_example_cluster_config_is_valid_and_agents_default_to_the_servers_cluster():
    settings = settings_for("cluster", **cluster_config(agentContexts=[]))
    assert settings.agent_context_names == ("datacenter",)
    assert settings.service_type == "LoadBalancer"
    assert settings.require_ek_cert is True
    assert settings.agent_node_label == ("keylime.dev/tpm", "true")
    assert settings.api_server("edge") == "https://edge.example.com:6443"


def test_the_cluster_stack_file_alone_names_every_key_the_user_must_set():
    problems = problems_for("cluster")
    assert [problem.split(":")[1] for problem in problems] == [
        "kubeconfig", "serverContext", "advertisedAddress", "imageRegistry", "ekTrustBundle"
    ]


def test_a_kubeconfig_set_in_plain_text_is_refused_without_quoting_it():
    (problem,) = problems_for("cluster", **cluster_config(kubeconfig=KUBECONFIG.value))
    assert problem.startswith(f"keylime-push:kubeconfig: got {SECRET_SHOWN}; allowed: the value set with --secret")
    assert "example-token-not-real" not in problem


def test_a_malformed_secret_is_refused_without_quoting_it():
    leaked = "postgresql://keylime:hunter2@db.example.com/keylime"
    problems = problems_for(
        "cluster", **cluster_config(databaseUrl=Secret(leaked), kubeconfig=Secret("token: hunter3\n"))
    )
    assert [problem.split(":")[1] for problem in problems] == ["kubeconfig", "databaseUrl"]
    assert "hunter2" not in " ".join(problems) and "hunter3" not in " ".join(problems)
    assert "does not start with postgresql+psycopg2://" in problems[1]


@pytest.mark.parametrize(
    ("url", "explains"),
    [
        ("postgresql+psycopg2://db.example.com/keylime", "no user@host"),
        ("postgresql+psycopg2://keylime:pw@db.example.com", "no /database"),
        ("postgresql+psycopg2://keylime:pw@db.example.com:port/keylime", "not a URL"),
    ],
)
def test_an_external_database_url_needs_user_host_and_database(url, explains):
    (problem,) = problems_for("cluster", **cluster_config(databaseUrl=Secret(url)))
    assert problem.startswith("keylime-push:databaseUrl:") and explains in problem


def test_a_well_formed_external_database_url_is_kept_secret():
    url = "postgresql+psycopg2://keylime:pw@db.example.com:5432/keylime"
    settings = settings_for("cluster", **cluster_config(databaseUrl=Secret(url)))
    assert settings.database_url is not None and settings.database_url.get_secret_value() == url
    assert "pw@" not in repr(settings)


@pytest.mark.parametrize(
    ("address", "explains"),
    [
        ("*.example.com", "a wildcard"),
        ("https://keylime.example.com", "a URL"),
        ("keylime.example.com:8881", "a port"),
        ("keylime_example.com", "cannot be a certificate SAN"),
        ("", "cannot be a certificate SAN"),
    ],
)
def test_an_advertised_address_that_cannot_be_a_san_is_refused(address, explains):
    (problem,) = problems_for("cluster", **cluster_config(advertisedAddress=address))
    assert problem.startswith("keylime-push:advertisedAddress:") and explains in problem


def test_contexts_missing_from_the_kubeconfig_are_refused_naming_those_it_has():
    problems = problems_for("cluster", **cluster_config(serverContext="lab", agentContexts=["edge", "factory"]))
    assert [problem.split(":")[1] for problem in problems] == ["serverContext", "agentContexts"]
    assert "'factory'" in problems[1] and "datacenter, edge" in problems[1]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("keylimeVersion", "7.14.2"),
        ("registrarReplicas", 1),
        ("verifierReplicas", 0),
        ("agentNodeLabel", "keylime.dev/tpm"),
        ("serviceType", "ClusterIP"),
        ("imageRegistry", "https://registry.example.com/keylime"),
        ("imageRegistry", "registry.example.com/keylime:v1"),
        ("imageRegistry", "registry.example.com"),
        ("postgresStorage", "10GB"),
        ("ekTrustBundle", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
        ("uuid", "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"),
    ],
)
def test_each_bad_cluster_value_is_refused_naming_its_key(key, value):
    (problem,) = problems_for("cluster", **cluster_config(**{key: value}))
    assert problem.startswith(f"keylime-push:{key}:")


def test_without_ek_certificate_checks_no_trust_bundle_is_needed():
    settings = settings_for("cluster", **cluster_config(requireEkCert=False, ekTrustBundle=""))
    assert settings.ek_trust_bundle == ""


def test_agents_dial_the_advertised_address_which_every_server_certificate_names():
    for service_type, registrar_port, verifier_port in (("LoadBalancer", 8890, 8881), ("NodePort", 30890, 30881)):
        settings = settings_for("cluster", **cluster_config(serviceType=service_type, advertisedAddress="10.0.0.7"))
        assert endpoints.dial(settings, "agent", "registrar").url == f"http://10.0.0.7:{registrar_port}"
        assert endpoints.dial(settings, "agent", "verifier").url == f"https://10.0.0.7:{verifier_port}"
        for server in endpoints.SERVERS:
            assert "10.0.0.7" in endpoints.server_sans(settings, server).ip_addresses


def test_the_fleet_is_sized_per_verifier_replica():
    one = settings_for("cluster", **cluster_config(expectedAgents=600, verifierReplicas=1))
    four = settings_for("cluster", **cluster_config(expectedAgents=600, verifierReplicas=4))
    assert keylime_conf.quote_interval(one) == 40 and keylime_conf.quote_interval(four) == 10
    assert keylime_conf.login_retry_seconds(four) < keylime_conf.login_retry_seconds(one)


def test_each_verifier_pod_runs_one_worker_on_the_database_its_environment_names():
    import configparser

    settings = settings_for("cluster", **cluster_config())
    verifier = configparser.RawConfigParser()
    verifier.read_string(keylime_conf.verifier_conf(settings))
    assert verifier["verifier"]["max_workers"] == "1"
    assert verifier["verifier"]["database_url"] == ""
    kind = configparser.RawConfigParser()
    kind.read_string(keylime_conf.verifier_conf(settings_for("swtpm")))
    assert kind["verifier"]["database_url"].startswith("sqlite:///")


def test_two_contexts_of_one_cluster_are_refused():
    kubeconfig = KUBECONFIG.value.replace(
        "current-context:", "  - name: datacenter-admin\n    context: {cluster: datacenter, user: admin}\ncurrent-context:"
    )
    overrides = cluster_config(kubeconfig=Secret(kubeconfig), agentContexts=["datacenter-admin", "edge"])
    (problem,) = problems_for("cluster", **overrides)
    assert problem.startswith("keylime-push:agentContexts: got 'datacenter-admin'")
    assert "'datacenter' names the same API server https://datacenter.example.com:6443" in problem
    assert settings_for("cluster", **cluster_config(agentContexts=["datacenter", "edge"])).agent_context_names == (
        "datacenter", "edge"
    )
