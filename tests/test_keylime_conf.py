"""The rendered keylime configuration files, parsed back the way keylime and rust-keylime read them."""

from __future__ import annotations

import configparser
import json
import sys
import tomllib

import pytest
from helpers import settings_for, under_each_hash_seed

from components import keylime_conf
from components.endpoints import service_fqdn


def ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()  # keylime's own reader
    parser.read_string(text)
    return parser


def test_verifier_runs_in_push_mode_and_reaches_the_registrar_over_tls():
    verifier = ini(keylime_conf.verifier_conf(settings_for("swtpm")))["verifier"]
    assert verifier["mode"] == "push"
    assert verifier["registrar_ip"] == service_fqdn("registrar")
    assert verifier["registrar_port"] == "8891"
    assert verifier["ip"] == "0.0.0.0"
    assert json.loads(verifier["trusted_client_ca"]) == [keylime_conf.CA_CERT]
    assert verifier["tls_dir"] == keylime_conf.TLS_DIR
    assert verifier["database_url"].startswith(f"sqlite:///{keylime_conf.DATA_DIR}/")


def test_registrar_serves_http_for_agents_and_tls_for_admins():
    registrar = ini(keylime_conf.registrar_conf(settings_for("swtpm")))["registrar"]
    assert (registrar["port"], registrar["tls_port"]) == ("8890", "8891")
    assert (registrar["server_cert"], registrar["server_key"]) == (keylime_conf.SERVER_CERT, keylime_conf.SERVER_KEY)


@pytest.mark.parametrize(("stack", "overrides", "expected"),
                         [("swtpm", {}, "True"), ("hwtpm", {}, "True"), ("swtpm", {"requireEkCert": "false"}, "False")])
def test_tenant_require_ek_cert_follows_the_stack(stack, overrides, expected):
    tenant = ini(keylime_conf.tenant_conf(settings_for(stack, **overrides)))["tenant"]
    assert tenant["require_ek_cert"] == expected
    assert tenant["verifier_ip"] == service_fqdn("verifier")
    assert json.loads(tenant["accept_tpm_hash_algs"]) == ["sha256"]
    assert json.loads(tenant["accept_tpm_signing_algs"]) == ["rsassa"]


def test_agent_conf_is_toml_with_the_push_agent_keys():
    settings = settings_for("swtpm", uuid="generate", registrarNodePort=31000, verifierNodePort=31500)
    agent = tomllib.loads(keylime_conf.agent_conf(settings))["agent"]
    assert agent["uuid"] == "generate"
    assert agent["registrar_ip"] == "keylime-swtpm-infra-control-plane"
    assert agent["registrar_port"] == 31000
    assert agent["registrar_tls_enabled"] is False
    assert agent["verifier_url"] == "https://keylime-swtpm-infra-control-plane:31500"
    assert agent["verifier_tls_ca_cert"] == f"{keylime_conf.TLS_DIR}/{keylime_conf.CA_CERT}"
    assert agent["tls_accept_invalid_certs"] is False and agent["tls_accept_invalid_hostnames"] is False


@pytest.mark.parametrize(("clusters", "interval"), [(1, 2), (2, 2), (30, 2), (64, 5)])
def test_verifier_cadence_scales_with_the_fleet(clusters, interval):
    """Session limits and the agents' login pace: tests/test_session_limits.py."""
    settings = settings_for("swtpm", agentClusters=clusters)
    verifier = ini(keylime_conf.verifier_conf(settings))["verifier"]
    assert int(verifier["quote_interval"]) == interval
    assert clusters / interval <= keylime_conf.SUSTAINED_ATTESTATIONS_PER_SECOND


def test_renderers_give_the_same_files_in_every_process():
    code = ("from helpers import settings_for; from components import keylime_conf; "
            "settings = settings_for('swtpm', extraSans=['a.example', 'b.example']); "
            "print(*(render(settings) for render in (keylime_conf.registrar_conf, keylime_conf.verifier_conf, "
            "keylime_conf.tenant_conf, keylime_conf.agent_conf)))")
    first, second = under_each_hash_seed([sys.executable, "-c", code])
    assert first == second
    assert "[registrar]" in first and "[agent]" in first


def test_toml_files_are_written_by_a_toml_writer_lists_and_quotes_included():
    # A Python repr of these lists would not be TOML: True, and a string quoted with double quotes.
    options = {"flags": [True, False], "names": ["it's", "ok"], "path": 'C:\\keylime "conf"', "on": True}
    assert tomllib.loads(keylime_conf.render_toml({"agent": options})) == {"agent": options}
