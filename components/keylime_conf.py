"""Keylime configuration files rendered from Python data: registrar, verifier, tenant and push agent.

The server files are complete (every option keylime 7.14.3's 2.6 templates define): keylime reads
options without defaults of its own (a missing integer becomes -1), and the deployment points
`KEYLIME_<COMPONENT>_CONFIG` at these files, which makes each the only file keylime reads.
"""

from __future__ import annotations

import json
import math

import tomli_w

from components.endpoints import REGISTRAR_PORT, REGISTRAR_TLS_PORT, VERIFIER_PORT, dial
from components.settings import Settings

CONFIG_VERSION = "2.6"
CONF_DIR = "/etc/keylime-push"
TLS_DIR = f"{CONF_DIR}/tls"
DATA_DIR = "/var/lib/keylime/data"
AGENT_KEYLIME_DIR = "/var/lib/keylime"
# The UEFI event log an agent with an mbPolicy sends: swtpm's synthetic one comes in its ConfigMap (CONF_DIR),
# the VM's is copied out of securityfs into BOOT_LOG_DIR.
BOOT_LOG_NAME = "binary_bios_measurements"
BOOT_LOG_DIR = "/var/lib/keylime-boot"
BOOT_LOG = f"{BOOT_LOG_DIR}/{BOOT_LOG_NAME}"

# File names inside TLS_DIR; each pod mounts only the Secret with its own keys.
CA_CERT = "cacert.crt"
SERVER_CERT = "server-cert.crt"
SERVER_KEY = "server-private.pem"
CLIENT_CERT = "client-cert.crt"
CLIENT_KEY = "client-private.pem"

# The push agent's quote is RSA/sha256/rsassa: the verifier hard-wires PoP to sha256/rsassa, and the
# quote must use the AK's own scheme, so the tenant offers nothing the agent cannot answer.
TPM_HASH_ALG, TPM_ENCRYPTION_ALG, TPM_SIGNING_ALG = "sha256", "rsa", "rsassa"

# One verifier sustains about 23 verified attestations/s on 2 cores; keep the load under ~15/s.
SUSTAINED_ATTESTATIONS_PER_SECOND = 15
DEFAULT_QUOTE_INTERVAL = 2

# keylime 7.14.3 refuses a new PoP session (POST /v3.0/sessions, 429) beyond SESSIONS_PER_AGENT per agent
# or DEFAULT_SESSIONS_PER_IP per source address within SESSION_WINDOW seconds, then blocks that agent or
# address for 60 s, doubling on every repeat up to 1 h, for as long as the verifier runs
# (keylime/web/verifier/session_controller.py, keylime/models/verifier/rate_limiter.py; defaults in
# templates/2.6/verifier.j2). The per-agent limit stays at keylime's default.
SESSION_WINDOW = 60
SESSIONS_PER_AGENT = 15
DEFAULT_SESSIONS_PER_IP = 50

# Until an agent is enrolled every login fails. keylime_push_model_agent 0.2.9 then makes LOGIN_ATTEMPTS
# attempts LOGIN_RETRY_DELAY seconds apart (rust-keylime keylime/src/auth.rs `authenticate`, with
# DEFAULT_AUTH_MAX_RETRIES from keylime/src/config/base.rs; no config key changes either), gives up the
# attestation and tries again after attestation_interval_seconds
# (keylime-push-model-agent/src/state_machine.rs, State::AttestationFailed).
LOGIN_ATTEMPTS = 3
LOGIN_RETRY_DELAY = 1
# Every login costs the verifier a 600,000-round PBKDF2 of the new session's token, enrolled agent or not
# (keylime/crypto.py hash_token_for_storage, from AuthSession.create_in_memory on POST /v3.0/sessions):
# 0.09-0.11 s of CPU in the lab, as much as an attestation or more. Agents waiting for enrollment may keep
# at most WAITING_LOGINS_CPU of the verifier's one CPU (its limit) busy: enrollment itself (the tenant's
# calls, the first attestations) queues behind their logins.
LOGIN_CPU_SECONDS = 0.11
WAITING_LOGINS_CPU = 0.4
SUSTAINED_LOGINS_PER_SECOND = WAITING_LOGINS_CPU / LOGIN_CPU_SECONDS


def agent_count(settings: Settings) -> int:
    """Each agent Kind cluster has one node, so one agent; hwtpm runs one VM; the cluster stack says how many."""
    if settings.tpm_mode == "cluster":
        assert settings.expected_agents is not None, "the cluster stack sizes for expectedAgents"
        return settings.expected_agents
    return settings.agent_clusters if settings.tpm_mode == "swtpm" else 1


def verifier_processes(settings: Settings) -> int:
    """The verifier processes that share the fleet: one per verifier pod in the cluster stack (one worker each)."""
    if settings.tpm_mode == "cluster":
        assert settings.verifier_replicas is not None, "the cluster stack sets verifierReplicas"
        return settings.verifier_replicas
    return 1


def agents_per_verifier(settings: Settings) -> int:
    """ClientIP affinity spreads agents over the verifier pods; each agent stays on one."""
    return math.ceil(agent_count(settings) / verifier_processes(settings))


def quote_interval(settings: Settings) -> int:
    """Agents attest at the verifier's pace (`seconds_to_next_attestation`), so scale it with the fleet."""
    return max(DEFAULT_QUOTE_INTERVAL, math.ceil(agents_per_verifier(settings) / SUSTAINED_ATTESTATIONS_PER_SECOND))


def login_round_seconds(retry_seconds: int) -> int:
    """From one round of logins to the next, for an agent waiting for enrollment (at the least: each
    attempt takes time too)."""
    return retry_seconds + (LOGIN_ATTEMPTS - 1) * LOGIN_RETRY_DELAY


def logins_per_window(retry_seconds: int) -> int:
    """The most sessions an agent waiting for enrollment opens within one SESSION_WINDOW.

    Attempts are counted at their earliest, and one exactly on the window's edge counts as inside, so no
    timing margin is relied on.
    """
    def at(attempt: int) -> int:
        return attempt // LOGIN_ATTEMPTS * login_round_seconds(retry_seconds) + attempt % LOGIN_ATTEMPTS * LOGIN_RETRY_DELAY

    # The schedule repeats every LOGIN_ATTEMPTS attempts, so windows opening on the first round are all there is.
    most = 0
    for first in range(LOGIN_ATTEMPTS):
        last = first
        while at(last + 1) - at(first) <= SESSION_WINDOW:
            last += 1
        most = max(most, last - first + 1)
    return most


def login_retry_seconds(settings: Settings) -> int:
    """The agent's attestation_interval_seconds: the shortest wait after a failed round of logins that keeps
    each agent waiting for enrollment within the verifier's per-agent session limit, and all of them within
    SUSTAINED_LOGINS_PER_SECOND.

    An agent enrolled while it waits attests at most one round later; from then on it follows the
    verifier's `seconds_to_next_attestation` (quote_interval), and this is only its wait after a failure.
    """
    agents = agents_per_verifier(settings)
    seconds = 1
    while (logins_per_window(seconds) > SESSIONS_PER_AGENT
           or agents * LOGIN_ATTEMPTS / login_round_seconds(seconds) > SUSTAINED_LOGINS_PER_SECOND):
        seconds += 1
    return seconds


def sessions_per_ip(settings: Settings) -> int:
    """All agents reach the verifier through one NodePort, so they share one source IP (SNAT).

    Each may use its whole per-agent allowance in the same window, so the shared address is never blocked
    where no single agent would be (agents waiting for enrollment use less: login_retry_seconds).
    """
    return max(DEFAULT_SESSIONS_PER_IP, SESSIONS_PER_AGENT * agent_count(settings))


def _py(value: object) -> str:
    """keylime parses list options as Python/JSON literals and booleans as True/False."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def render_ini(sections: dict[str, dict[str, object]]) -> str:
    lines: list[str] = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_py(value)}".rstrip() for key, value in options.items())
        lines.append("")
    return "\n".join(lines)


_DURABLE_ATTESTATION = {
    "durable_attestation_import": "",
    "persistent_store_url": "",
    "transparency_log_url": "",
    "time_stamp_authority_url": "",
    "time_stamp_authority_certs_path": "",
    "persistent_store_format": "json",
    "persistent_store_encoding": "",
    "transparency_log_sign_algo": "sha256",
}


# Both servers present their own certificate (from the Secret mounted at TLS_DIR) and trust client
# certificates issued by the one CA; cert_subject_alternative_names only applies to generated certs.
_SERVER_TLS = {
    "tls_dir": TLS_DIR,
    "server_key": SERVER_KEY,
    "server_key_password": "",
    "server_cert": SERVER_CERT,
    "cert_subject_alternative_names": "",
    "trusted_client_ca": [CA_CERT],
}


def _database_url(settings: Settings, server: str) -> str:
    """sqlite on the pod's volume; in the cluster stack PostgreSQL, whose URL (it holds the password) comes from a
    Secret as KEYLIME_<SERVER>_DATABASE_URL, which keylime reads over this file's value."""
    return "" if settings.tpm_mode == "cluster" else f"sqlite:///{DATA_DIR}/{server}.sqlite"


def verifier_workers(settings: Settings) -> int:
    """keylime 7.14.3 keeps a push agent's PoP session and its timeout timer in one worker process's memory
    (session_controller.py, push_agent_monitor.py): an agent whose connections reach another worker gets 404s
    and false TIMEOUTs. With several pods, ClientIP affinity keeps an agent on one pod, so each pod runs one
    worker (README, "Several servers on PostgreSQL"); one pod alone keeps keylime's own worker count."""
    return 1 if settings.tpm_mode == "cluster" else 16


def registrar_conf(settings: Settings) -> str:
    return render_ini(
        {
            "registrar": {
                "version": CONFIG_VERSION,
                "ip": "0.0.0.0",
                "port": REGISTRAR_PORT,
                "tls_port": REGISTRAR_TLS_PORT,
                **_SERVER_TLS,
                "authorization_provider": "simple",
                "database_url": _database_url(settings, "registrar"),
                "database_pool_sz_ovfl": "5,10",
                "max_workers": 16,
                "auto_migrate_db": True,
                **_DURABLE_ATTESTATION,
                "signed_attributes": "ek_tpm,aik_tpm,ekcert",
                "tpm_identity": "default",
                "malformed_cert_action": "warn",
            }
        }
    )


def verifier_conf(settings: Settings) -> str:
    registrar = dial(settings, "verifier", "registrar")
    return render_ini(
        {
            "verifier": {
                "version": CONFIG_VERSION,
                "uuid": "default",
                "ip": "0.0.0.0",
                "port": VERIFIER_PORT,
                "registrar_ip": registrar.host,
                "registrar_port": registrar.port,
                "enable_agent_mtls": True,
                **_SERVER_TLS,
                "client_key": CLIENT_KEY,
                "client_key_password": "",
                "client_cert": CLIENT_CERT,
                "trusted_server_ca": [CA_CERT],
                "authorization_provider": "simple",
                "database_url": _database_url(settings, "verifier"),
                "database_pool_sz_ovfl": "5,10",
                "auto_migrate_db": True,
                "num_workers": 0,
                "max_workers": verifier_workers(settings),
                "exponential_backoff": True,
                "retry_interval": 2,
                "max_retries": 5,
                "quote_interval": quote_interval(settings),
                "max_upload_size": 104857600,
                "request_timeout": 60.0,
                # Agents enrolled with an mbPolicy (a reference state from `keylime-policy create
                # measured-boot`) are judged by keylime's shim + grub + Linux policy; with accept-all the
                # reference state would be ignored. "always": a reboot into another boot chain is judged
                # again ("once" judges only an agent's first attestation).
                "measured_boot_policy_name": "example",
                "measured_boot_imports": [],
                "measured_boot_evaluate": "always",
                "severity_labels": ["info", "notice", "warning", "error", "critical", "alert", "emergency"],
                "severity_policy": [{"event_id": ".*", "severity_label": "emergency"}],
                "ignore_tomtou_errors": False,
                **_DURABLE_ATTESTATION,
                "signed_attributes": "",
                "require_allow_list_signatures": False,
                "mode": "push",
                "challenge_lifetime": 1800,
                "verification_timeout": 0,
                "session_create_rate_limit_per_ip": sessions_per_ip(settings),
                "session_create_rate_limit_window_ip": SESSION_WINDOW,
                "session_create_rate_limit_per_agent": SESSIONS_PER_AGENT,
                "session_create_rate_limit_window_agent": SESSION_WINDOW,
                "session_lifetime": 180,
                "extend_token_on_attestation": True,
                "auto_recover_attestation_failures": False,
                "shutdown_drain_timeout": 10,
            },
            "revocations": {
                "enabled_revocation_notifications": [],
                "zmq_ip": "127.0.0.1",
                "zmq_port": 8992,
                "webhook_url": "",
            },
        }
    )


def tenant_conf(settings: Settings) -> str:
    verifier = dial(settings, "tenant", "verifier")
    registrar = dial(settings, "tenant", "registrar")
    return render_ini(
        {
            "tenant": {
                "version": CONFIG_VERSION,
                "verifier_ip": verifier.host,
                "verifier_port": verifier.port,
                "registrar_ip": registrar.host,
                "registrar_port": registrar.port,
                "tls_dir": TLS_DIR,
                "enable_agent_mtls": True,
                "client_key": CLIENT_KEY,
                "client_key_password": "",
                "client_cert": CLIENT_CERT,
                "trusted_server_ca": [CA_CERT],
                "tpm_cert_store": "/var/lib/keylime/tpm_cert_store",
                "max_payload_size": 1048576,
                "accept_tpm_hash_algs": [TPM_HASH_ALG],
                "accept_tpm_encryption_algs": [TPM_ENCRYPTION_ALG],
                "accept_tpm_signing_algs": [TPM_SIGNING_ALG],
                "exponential_backoff": True,
                "retry_interval": 2,
                "max_retries": 5,
                "request_timeout": 60,
                "require_ek_cert": settings.require_ek_cert,
                "ek_check_script": "",
                "mb_refstate": "",
            }
        }
    )


def render_toml(tables: dict[str, dict[str, object]]) -> str:
    return tomli_w.dumps(tables)


def agent_conf(settings: Settings) -> str:
    """rust-keylime 0.2.9's agent.conf (TOML); the push agent reads the keys of `PushModelConfig`."""
    registrar = dial(settings, "agent", "registrar")
    verifier = dial(settings, "agent", "verifier")
    # No run_as (the production guide's KEYLIME_AGENT_RUN_AS=""): 0.2.9 drops privileges only when started as
    # root (keylime-push-model-agent/src/main.rs), ignores run_as with a warning otherwise, and defaults it to
    # "" for a non-root process (keylime/src/config/base.rs); the pod runs as agentUid with runAsNonRoot.
    options = {
        "version": "2.4",
        "uuid": settings.uuid,
        "registrar_ip": registrar.host,
        "registrar_port": registrar.port,
        "registrar_tls_enabled": registrar.tls,
        "registrar_tls_ca_cert": f"{TLS_DIR}/{CA_CERT}",
        "verifier_url": verifier.url,
        "verifier_tls_ca_cert": f"{TLS_DIR}/{CA_CERT}",
        "keylime_dir": AGENT_KEYLIME_DIR,
        # The AK: kept on the node with keylime_dir, so a replaced pod does not make a new one, which the
        # registrar would refuse for good (403) next to the same EK.
        "agent_data_path": f"{AGENT_KEYLIME_DIR}/agent_data.json",
        # Not the attestation cadence (the verifier's quote_interval sets that) but the wait after a failure,
        # which before enrollment paces the agent's logins.
        "attestation_interval_seconds": login_retry_seconds(settings),
        "tpm_hash_alg": TPM_HASH_ALG,
        "tpm_encryption_alg": TPM_ENCRYPTION_ALG,
        "tpm_signing_alg": TPM_SIGNING_ALG,
        "enable_iak_idevid": False,
        "tls_accept_invalid_certs": False,
        "tls_accept_invalid_hostnames": False,
    }
    if settings.mb_policy:
        options["measuredboot_ml_path"] = f"{CONF_DIR}/{BOOT_LOG_NAME}" if settings.tpm_mode == "swtpm" else BOOT_LOG
    return render_toml({"agent": options})
