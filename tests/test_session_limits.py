"""The verifier's session limits and the agents' login pace, as rendered, follow the number of agents.

Until an agent is enrolled every login fails; keylime_push_model_agent 0.2.9 then logs in 3 times 1 s apart
and tries again after attestation_interval_seconds. keylime 7.14.3 refuses a new session past its limits
per agent and per source address (all agents share one, SNAT), and blocks for 60 s and more. Each login
costs the verifier a PBKDF2 of 0.09-0.11 s of CPU. tests/lab/test_storm.py runs 64 agents for real.
"""

from __future__ import annotations

import configparser
import tomllib

import pytest
from helpers import env_of, kube_objects, pod_spec, settings_for

from components import keylime_conf

LOGIN_ATTEMPTS, LOGIN_RETRY_DELAY = 3, 1  # rust-keylime v0.2.9 keylime/src/auth.rs, config/base.rs
LOGIN_CPU_SECONDS = 0.11  # measured in the lab (tests/lab/test_storm.py's servers): 0.09-0.11 s
WINDOWS = 5


def verifier_options(settings) -> configparser.SectionProxy:
    parser = configparser.RawConfigParser()
    parser.read_string(keylime_conf.verifier_conf(settings))
    return parser["verifier"]


def retry_seconds(settings) -> int:
    return tomllib.loads(keylime_conf.agent_conf(settings))["agent"]["attestation_interval_seconds"]


def login_times(retry: int, until: float) -> list[float]:
    """When an agent waiting for enrollment opens sessions, at the earliest (each attempt also takes time)."""
    times: list[float] = []
    start = 0.0
    while start < until:
        times.extend(start + attempt * LOGIN_RETRY_DELAY for attempt in range(LOGIN_ATTEMPTS))
        start += (LOGIN_ATTEMPTS - 1) * LOGIN_RETRY_DELAY + retry
    return times


def first_refused(arrivals: list[float], limit: int, window: float) -> float | None:
    """keylime 7.14.3's RateLimiter.check_rate_limit for one key (models/verifier/rate_limiter.py): a request
    is refused when `limit` earlier ones arrived within the last `window` seconds."""
    kept: list[float] = []
    for at in sorted(arrivals):
        kept = [earlier for earlier in kept if earlier > at - window]
        if len(kept) >= limit:
            return at
        kept.append(at)
    return None


@pytest.mark.parametrize(
    ("agents", "retry", "per_ip"), [(1, 11, 50), (2, 11, 50), (4, 11, 60), (16, 12, 240), (30, 23, 450), (64, 51, 960)]
)
def test_rendered_session_limits_and_login_pace_follow_the_agent_count(agents, retry, per_ip):
    settings = settings_for("swtpm", agentClusters=agents)
    verifier = verifier_options(settings)
    assert int(verifier["session_create_rate_limit_per_ip"]) == per_ip
    assert int(verifier["session_create_rate_limit_per_agent"]) == 15  # keylime's default, kept
    assert int(verifier["session_create_rate_limit_window_ip"]) == 60
    assert int(verifier["session_create_rate_limit_window_agent"]) == 60
    assert retry_seconds(settings) == retry


def test_the_hwtpm_stack_sizes_for_its_one_agent():
    settings = settings_for("hwtpm")
    assert int(verifier_options(settings)["session_create_rate_limit_per_ip"]) == 50
    assert retry_seconds(settings) == 11


@pytest.mark.parametrize("agents", [1, 2, 16, 30, 64])
def test_agents_started_at_once_and_waiting_for_enrollment_are_never_refused_nor_overload_the_verifier(agents):
    settings = settings_for("swtpm", agentClusters=agents)
    verifier = verifier_options(settings)
    window = int(verifier["session_create_rate_limit_window_ip"])
    retry = retry_seconds(settings)
    own = login_times(retry, until=WINDOWS * window)
    assert first_refused(own, int(verifier["session_create_rate_limit_per_agent"]), window) is None
    assert first_refused(own * agents, int(verifier["session_create_rate_limit_per_ip"]), window) is None
    # The verifier's CPU for their logins stays within 0.4 of one CPU (its limit is 1).
    assert agents * LOGIN_ATTEMPTS / (retry + (LOGIN_ATTEMPTS - 1) * LOGIN_RETRY_DELAY) * LOGIN_CPU_SECONDS <= 0.4
    # Enrolled while waiting, an agent logs in within a minute: far inside enrollment's verify wait.
    assert retry + (LOGIN_ATTEMPTS - 1) * LOGIN_RETRY_DELAY <= 60


@pytest.mark.parametrize("agents", [2, 64])
def test_the_model_refuses_the_sizing_this_program_rendered_before(agents):
    """What main rendered before: the agent retried after quote_interval, 4 sessions per agent per address.
    The limiter model above finds the block that the lab shows for real (tests/lab/test_storm.py)."""
    settings = settings_for("swtpm", agentClusters=agents)
    window = 60
    own = login_times(keylime_conf.quote_interval(settings), until=window)
    assert first_refused(own, 15, window) is not None
    assert first_refused(own * agents, max(50, 4 * agents), window) is not None


def test_the_declared_configs_carry_the_sizing_and_nothing_overrides_the_agents_pace(run):
    program = run("swtpm", agentClusters=4)
    (infra,) = [c for c in kube_objects(program, "ConfigMap", "infra") if c.plain["metadata"]["name"] == "keylime-config"]
    parser = configparser.RawConfigParser()
    parser.read_string(infra.plain["data"]["verifier.conf"])
    assert int(parser["verifier"]["session_create_rate_limit_per_ip"]) == 60
    daemon_sets = kube_objects(program, "DaemonSet")
    assert len(daemon_sets) == 4
    for cluster in ("agents-1", "agents-2", "agents-3", "agents-4"):
        (config,) = kube_objects(program, "ConfigMap", cluster)
        assert tomllib.loads(config.plain["data"]["agent.conf"])["agent"]["attestation_interval_seconds"] == 11
    for daemon_set in daemon_sets:
        for container in pod_spec(daemon_set)["containers"]:
            # A KEYLIME_AGENT_<KEY> variable would take precedence over agent.conf (rust-keylime config/env.rs).
            assert "KEYLIME_AGENT_ATTESTATION_INTERVAL_SECONDS" not in env_of(container)
