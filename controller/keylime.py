"""keylime's REST APIs over mTLS: the registrar's and the verifier's admin endpoints, bulk where keylime has them.

keylime 7.14.3 has no v3 agent listing (its v3 AgentController answers 404 "TODO"), so the v2 API is used:
the registrar lists only agent IDs (`GET /agents/` -> {"uuids": [...]}), the verifier lists every agent with
its status in one call (`GET /agents/?bulk=true`). Transient failures (connection errors, 5xx, 429) are
retried with exponential backoff; anything else is an answer.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import requests

from .backoff import Backoff, Transient
from .enrollment import Policies

API_VERSION = "2.6"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# What the verifier may pick for quotes. The push agent's AK is RSA/sha256/rsassa (the only PoP it can do), so
# sha256/rsassa must be allowed; sha384/512 first, as the tenant's defaults do, for TPMs that offer them.
ACCEPT_HASH_ALGS = ["sha512", "sha384", "sha256"]
ACCEPT_ENCRYPTION_ALGS = ["ecc", "rsa"]
ACCEPT_SIGNING_ALGS = ["ecschnorr", "rsassa"]


class Unavailable(RuntimeError):  # noqa: N818 (a state of the server, as `except Unavailable` reads)
    """The server did not answer usefully after the retries."""


@dataclasses.dataclass(frozen=True)
class Tls:
    ca: str
    cert: str
    key: str


class Api:
    """One keylime server's v2 admin API."""

    def __init__(self, base_url: str, tls: Tls, backoff: Backoff | None = None, timeout: float = 30,
                 session: requests.Session | None = None):
        self.base = f"{base_url.rstrip('/')}/v{API_VERSION}"
        self.session = session or requests.Session()
        # Only the given CA and no proxy: REQUESTS_CA_BUNDLE or HTTPS_PROXY in the environment must not apply.
        self.session.trust_env = False
        self.session.verify = tls.ca
        self.session.cert = (tls.cert, tls.key)
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self.calls = 0

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None,
                params: Mapping[str, str] | None = None) -> requests.Response:
        def attempt() -> requests.Response:
            self.calls += 1
            try:
                response = self.session.request(method, f"{self.base}{path}", params=params, timeout=self.timeout,
                                                data=json.dumps(body) if body is not None else None)
            except requests.RequestException as error:
                raise Transient(f"{method} {path}: {error}") from None
            if response.status_code in TRANSIENT_STATUSES:
                raise Transient(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
            return response

        try:
            return self.backoff.run(attempt)
        except Transient as error:
            raise Unavailable(str(error)) from None

    @staticmethod
    def results(response: requests.Response, what: str) -> Any:
        if response.status_code != 200:
            raise Unavailable(f"{what}: HTTP {response.status_code} {response.text[:300]}")
        return response.json().get("results")


class Registrar(Api):
    def agent_ids(self) -> frozenset[str]:
        return frozenset(self.results(self.request("GET", "/agents/"), "registrar agent list")["uuids"])

    def agent(self, uuid: str) -> Mapping[str, Any] | None:
        """An activated registration; None while it is not activated (keylime answers 404 until then)."""
        response = self.request("GET", f"/agents/{uuid}")
        if response.status_code == 404:
            return None
        return self.results(response, f"registrar agent {uuid}")

    def delete(self, uuid: str) -> None:
        response = self.request("DELETE", f"/agents/{uuid}")
        if response.status_code not in (200, 404):
            raise Unavailable(f"registrar delete {uuid}: HTTP {response.status_code} {response.text[:300]}")


class Verifier(Api):
    def agents(self) -> dict[str, Mapping[str, Any]]:
        return dict(self.results(self.request("GET", "/agents/", params={"bulk": "true"}), "verifier bulk status") or {})

    def delete(self, uuid: str) -> None:
        response = self.request("DELETE", f"/agents/{uuid}")
        if response.status_code not in (200, 404):
            raise Unavailable(f"verifier delete {uuid}: HTTP {response.status_code} {response.text[:300]}")

    def enroll(self, uuid: str, aik_tpm: str, policies: Policies, metadata: Mapping[str, str]) -> None:
        """What `keylime_tenant -c add --push-model [--mb-policy]` sends, with the controller's metadata (the agent's
        placement, and the digest of its measured-boot policy). No mb_policy_name: the verifier keeps the policy
        under the agent's ID and deletes it with the agent."""
        body = {
            "v": None,
            "cloudagent_ip": None,
            "cloudagent_port": None,
            "tpm_policy": policies.stored_tpm_policy(),
            "runtime_policy": base64.b64encode(b"").decode(),
            "runtime_policy_name": None,
            "runtime_policy_key": None,
            "mb_policy": policies.boot,
            "mb_policy_name": None,
            "ima_sign_verification_keys": "",
            "metadata": json.dumps({**metadata, **policies.metadata()}),
            "revocation_key": "",
            "accept_tpm_hash_algs": ACCEPT_HASH_ALGS,
            "accept_tpm_encryption_algs": ACCEPT_ENCRYPTION_ALGS,
            "accept_tpm_signing_algs": ACCEPT_SIGNING_ALGS,
            "ak_tpm": aik_tpm,
            "mtls_cert": None,
            "supported_version": API_VERSION,
        }
        response = self.request("POST", f"/agents/{uuid}", body)
        if response.status_code != 200:
            raise Unavailable(f"verifier enroll {uuid}: HTTP {response.status_code} {response.text[:300]}")
