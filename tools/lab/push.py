"""The keylime v3 push attestation protocol, as keylime_push_model_agent 0.2.9 speaks it, on a tpm2-tools TPM.

    client = PushClient(...)          # the verifier URL and CA the agent's agent.conf names
    client.authenticate()             # PoP: TPM2_Certify of the AK over the verifier's challenge
    client.attest()                   # negotiate, quote the selected PCRs, submit the evidence
    client.attest_times(2)            # ...at the pace the verifier asks for (seconds_to_next, Retry-After)
    PushAgent(client, retry_seconds, journal).run(stop)   # the agent's whole schedule, logins included

`tpm` runs one tpm2-tools command in `workdir` (where tpm2_createak left ak.pub, a TPM2B_PUBLIC, and
ak.name); `tpm_send` sends one raw command to the TPM and returns its response. The wire format is
documented in shared/reference/push-protocol.md, as verified against keylime 7.14.3. With `uefi_log`
(the agent's measuredboot_ml_path) the client also offers the UEFI event log, as 0.2.9's struct_filler
does, and sends it, read from that path when asked for, base64 of the raw bytes, as context_info does.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import http.client
import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components import boot_log

JSON_API = "application/vnd.api+json"
API = "/v3.0"
TPM_ST_SESSIONS = 0x8002
TPM_CC_CERTIFY = 0x148
TPM_RS_PW = 0x40000009
TPM_ALG_NULL = 0x0010
TPM_RC_RETRY = 0x922
TPM_RC_YIELDED = 0x908
TPM_RC_TESTING = 0x90A


# keylime_push_model_agent 0.2.9 logs in with up to 3 attempts 1 s apart (rust-keylime keylime/src/auth.rs
# `authenticate`, DEFAULT_AUTH_MAX_RETRIES in keylime/src/config/base.rs). Written out here rather than
# taken from the program (components/keylime_conf.py sizes the verifier on the same facts): the emulated
# agent must not change when the program's assumptions do.
LOGIN_ATTEMPTS = 3
LOGIN_RETRY_DELAY = 1.0
# The agent gives every request 5 s (DEFAULT_AUTH_TIMEOUT_MS for logins, the --timeout default of
# keylime-push-model-agent/src/main.rs for the rest); a request that takes longer fails.
AGENT_TIMEOUT = 5.0
HTTP_TIMEOUT = 30.0


class ProtocolError(RuntimeError):
    def __init__(self, step: str, status: int, body: Any, retry_after: float | None = None):
        self.step, self.status, self.body, self.retry_after = step, status, body, retry_after
        super().__init__(f"{step}: HTTP {status}: {body}")


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `address`, verifying the certificate as `host` (the name the agent's config uses)."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext, timeout: float = HTTP_TIMEOUT):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # HTTPSConnection sets the private _context typeshed leaves out
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def certify_command(ak_handle: int, qualifying_data: bytes) -> bytes:
    """TPM2_Certify(objectHandle=AK, signHandle=AK, qualifyingData, inScheme=NULL), empty-auth password sessions.

    tpm2-tools 5.4's tpm2_certify cannot pass qualifying data, so the command is built here.
    """
    password_session = struct.pack(">I", TPM_RS_PW) + tpm2b(b"") + b"\x00" + tpm2b(b"")
    authorization = password_session * 2
    body = (
        struct.pack(">II", ak_handle, ak_handle)
        + struct.pack(">I", len(authorization))
        + authorization
        + tpm2b(qualifying_data)
        + struct.pack(">H", TPM_ALG_NULL)
    )
    return struct.pack(">HII", TPM_ST_SESSIONS, 10 + len(body), TPM_CC_CERTIFY) + body


def parse_certify_response(response: bytes) -> tuple[bytes, bytes]:
    """(TPMS_ATTEST, TPMT_SIGNATURE) out of a TPM2_Certify response."""
    _tag, _size, code = struct.unpack(">HII", response[:10])
    if code:
        raise TpmError(code)
    offset = 14  # header, then parameterSize
    (attest_size,) = struct.unpack(">H", response[offset : offset + 2])
    attest = response[offset + 2 : offset + 2 + attest_size]
    offset += 2 + attest_size
    (signature_size,) = struct.unpack(">H", response[offset + 4 : offset + 6])
    signature = response[offset : offset + 6 + signature_size]
    return attest, signature


class TpmError(RuntimeError):
    def __init__(self, code: int):
        self.code = code
        super().__init__(f"TPM response code {code:#x}")


@dataclasses.dataclass
class Outcome:
    """One attestation: what the verifier asked for and when it wants the next one."""

    selected_pcrs: list[int]
    seconds_to_next: float
    status: int


class PushClient:
    POP = {"authentication_class": "pop", "authentication_type": "tpm_pop"}

    def __init__(
        self,
        tpm: Callable[..., subprocess.CompletedProcess],
        workdir: Path,
        uuid: str,
        verifier_url: str,
        ca_file: Path,
        connect_to: str,
        port: int,
        ak_handle: int,
        tpm_send: Callable[[bytes], bytes],
        uefi_log: Path | None = None,
    ):
        self.tpm = tpm
        self.workdir = workdir
        self.uuid = uuid
        # The certificate is verified as the URL's host; the connection goes to connect_to:port (in the
        # lab, the NodePort's target on loopback).
        self.host = urlsplit(verifier_url).hostname
        self.connect_to, self.port = connect_to, port
        self.context = ssl.create_default_context(cafile=str(ca_file))  # hostname checking on
        self.ak_handle = ak_handle
        self.tpm_send = tpm_send
        self.uefi_log = uefi_log
        self.token: str | None = None
        self.timeout = HTTP_TIMEOUT

    # --- transport ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> tuple[int, dict, dict]:
        # verifier_url (agent.conf's) always names a host, so hostname is never None
        connection = PinnedHTTPSConnection(self.host, self.port, self.connect_to, self.context, self.timeout)  # type: ignore[arg-type]
        headers = {"Content-Type": JSON_API, "Accept": JSON_API}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request(method, API + path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else {}
        finally:
            connection.close()

    # --- proof of possession ------------------------------------------------------------------

    def certify(self, nonce: bytes) -> tuple[bytes, bytes]:
        for _ in range(20):
            try:
                return parse_certify_response(self.tpm_send(certify_command(self.ak_handle, nonce)))
            except TpmError as error:
                if error.code not in (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING):
                    raise
                time.sleep(0.05)
        raise TpmError(TPM_RC_RETRY)

    def authenticate(self, tamper_challenge: bool = False) -> str:
        session_id, challenge = self.begin_session()
        if tamper_challenge:
            challenge = bytes(b ^ 0xFF for b in challenge)
        return self.complete_session(session_id, challenge)

    def begin_session(self) -> tuple[str, bytes]:
        """POST /sessions: the session's id and the challenge to certify the AK over."""
        status, headers, answer = self.request(
            "POST", "/sessions",
            {"data": {"type": "session", "attributes": {"agent_id": self.uuid, "authentication_supported": [self.POP]}}},
            auth=False,
        )
        if status not in (200, 201):
            retry_after = headers.get("Retry-After")
            raise ProtocolError("POST /sessions", status, answer, float(retry_after) if retry_after else None)
        requested = answer["data"]["attributes"]["authentication_requested"][0]
        return answer["data"]["id"], base64.b64decode(requested["chosen_parameters"]["challenge"])

    def complete_session(self, session_id: str, challenge: bytes) -> str:
        """PATCH /sessions/{id} with TPM2_Certify of the AK over `challenge`: the bearer token."""
        attest, signature = self.certify(challenge)
        signed = {"message": base64.b64encode(attest).decode(), "signature": base64.b64encode(signature).decode()}
        provided = {**self.POP, "data": signed}
        status, _, answer = self.request(
            "PATCH",
            f"/sessions/{session_id}",
            {
                "data": {
                    "type": "session",
                    "id": session_id,
                    "attributes": {"agent_id": self.uuid, "authentication_provided": [provided]},
                }
            },
            auth=False,
        )
        attributes = answer.get("data", {}).get("attributes", {})
        if status != 200 or attributes.get("evaluation") != "pass":
            raise ProtocolError(f"PATCH /sessions/{session_id}", status, answer)
        self.token = attributes["token"]
        return self.token

    # --- one attestation ---------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        ak_public = (self.workdir / "ak.pub").read_bytes()
        ak_name = (self.workdir / "ak.name").read_bytes().hex()
        all_pcrs = list(range(24))
        return {
            "data": {
                "type": "attestation",
                "attributes": {
                    "evidence_supported": [
                        {
                            "evidence_class": "certification",
                            "evidence_type": "tpm_quote",
                            "capabilities": {
                                "component_version": "2.0",
                                "hash_algorithms": ["sha256"],
                                "signature_schemes": ["rsassa"],
                                "available_subjects": {"sha256": all_pcrs},
                                "certification_keys": [
                                    {
                                        "key_class": "asymmetric",
                                        "key_algorithm": "rsa",
                                        "key_size": 2048,
                                        "server_identifier": "ak",
                                        "local_identifier": ak_name,
                                        "public": base64.b64encode(ak_public).decode(),
                                        "allowable_hash_algorithms": ["sha256"],
                                        "allowable_signature_schemes": ["rsassa"],
                                    }
                                ],
                            },
                        },
                        *self.log_capabilities(),
                    ],
                    "system_info": {"boot_time": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()},
                },
            }
        }

    def log_capabilities(self) -> list[dict[str, Any]]:
        """The uefi_log item 0.2.9 offers (evidence_version is its uefi_logs_evidence_version default)."""
        if self.uefi_log is None:
            return []
        return [{
            "evidence_class": "log",
            "evidence_type": "uefi_log",
            "capabilities": {
                "evidence_version": "2.1",
                "entry_count": len(boot_log.extends(self.uefi_log.read_bytes())),
                "supports_partial_access": False,
                "appendable": False,
                "formats": ["application/octet-stream"],
            },
        }]

    def evidence(self, item: dict[str, Any]) -> dict[str, Any]:
        """One evidence_collected item for one evidence_requested item."""
        if item["evidence_type"] == "uefi_log" and self.uefi_log is not None:
            return {"evidence_class": "log", "evidence_type": "uefi_log",
                    "data": {"entries": base64.b64encode(self.uefi_log.read_bytes()).decode()}}
        if item["evidence_type"] != "tpm_quote":
            raise ProtocolError(f"evidence {item['evidence_type']}", 0, "the agent offered no such evidence")
        chosen = item["chosen_parameters"]
        return {"evidence_class": "certification", "evidence_type": "tpm_quote",
                "data": self.quote(base64.b64decode(chosen["challenge"]), chosen["selected_subjects"]["sha256"])}

    def quote(self, challenge: bytes, pcrs: list[int]) -> dict[str, str]:
        selection = "sha256:" + ",".join(map(str, pcrs))
        self.tpm(
            "tpm2_quote",
            "-c",
            hex(self.ak_handle),
            "-l",
            selection,
            "-q",
            challenge.hex(),
            "-g",
            "sha256",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "quote.pcrs",
        )
        read = lambda name: base64.b64encode((self.workdir / name).read_bytes()).decode()  # noqa: E731
        return {"message": read("quote.msg"), "signature": read("quote.sig"), "subject_data": read("quote.pcrs")}

    def attest_times(self, count: int, timeout: float = 60) -> list[Outcome]:
        """`count` accepted attestations, waiting as long as the verifier says between them."""
        deadline = time.monotonic() + timeout
        accepted: list[Outcome] = []
        while len(accepted) < count:
            outcome = self.attest()
            if outcome.status == 202:
                accepted.append(outcome)
                if len(accepted) == count:
                    break
            if time.monotonic() + outcome.seconds_to_next > deadline:
                raise TimeoutError(f"{len(accepted)} of {count} attestations accepted within {timeout:.0f} s")
            time.sleep(outcome.seconds_to_next)
        return accepted

    @contextlib.contextmanager
    def attesting(self) -> Iterator[None]:
        """Attest at the verifier's pace in the background while the block runs, as a live agent does: a check that
        takes longer than the verifier's timeout (5 x quote_interval) must still find the agent PASS, not TIMEOUT."""
        stop = threading.Event()
        errors: list[Exception] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    outcome = self.attest()
                except Exception as error:  # noqa: BLE001 - reported when the block ends
                    errors.append(error)
                    return
                stop.wait(outcome.seconds_to_next)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=60)
        if errors:
            raise errors[0]

    def attest(self) -> Outcome:
        if self.token is None:
            self.authenticate()
        status, headers, answer = self.request("POST", f"/agents/{self.uuid}/attestations", self.capabilities())
        if status == 429:
            return Outcome([], float(headers.get("Retry-After", 1)), status)
        if status != 201:
            raise ProtocolError("POST attestations", status, answer)
        requested = answer["data"]["attributes"]["evidence_requested"]
        # In the order and number the verifier asked for.
        evidence = [self.evidence(item) for item in requested]
        selected = [pcr for item in requested if item["evidence_type"] == "tpm_quote"
                    for pcr in item["chosen_parameters"]["selected_subjects"]["sha256"]]
        status, headers, answer = self.request(
            "PATCH",
            f"/agents/{self.uuid}/attestations/latest",
            {"data": {"type": "attestation", "attributes": {"evidence_collected": evidence}}},
        )
        if status == 429:
            return Outcome(selected, float(headers.get("Retry-After", 1)), status)
        if status != 202:
            raise ProtocolError("PATCH attestations/latest", status, answer)
        seconds = answer.get("meta", {}).get("seconds_to_next_attestation")
        return Outcome(selected, float(seconds) if seconds is not None else 2.0, status)


# --- the agent's schedule ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One request of an agent, as the journal keeps it."""

    agent: str
    kind: str
    """"session" (one login attempt: POST /sessions, then the proof of possession) or "attestation"."""
    at: float
    """time.monotonic() when it was sent."""
    status: int
    """The HTTP status that ended it (200 for a login the verifier evaluated), 0 if the connection failed."""
    passed: bool
    """A token (session) or accepted evidence (attestation)."""
    retry_after: float | None = None


class Journal:
    """Every request of every agent, in the order they were sent; shared by the agents' threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []

    def add(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self, kind: str | None = None) -> list[Request]:
        with self._lock:
            return sorted((r for r in self._requests if kind in (None, r.kind)), key=lambda r: r.at)


def most_within(requests: list[Request], seconds: float) -> int:
    """The most of `requests` that fall within any `seconds`-long window."""
    times = sorted(r.at for r in requests)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


class PushAgent:
    """keylime_push_model_agent 0.2.9's state machine around a PushClient, as rust-keylime v0.2.9 has it.

    - Login (keylime/src/auth.rs): up to LOGIN_ATTEMPTS sessions LOGIN_RETRY_DELAY apart. A 429 on
      POST /sessions is one more failed attempt: the login client has no Retry-After handling.
    - A failed login fails the attestation before any request is sent (the authentication middleware
      in keylime/src/resilient_client.rs; reqwest-retry treats a middleware error as fatal), and the
      state machine (keylime-push-model-agent/src/state_machine.rs) tries again after
      attestation_interval_seconds: `retry_seconds` here. No other backoff applies.
    - Once logged in it attests at the verifier's pace (seconds_to_next_attestation); a 429 waits
      Retry-After (the RetryAfterMiddleware), a 401 drops the token and logs in again at once, any other
      refusal waits `retry_seconds`. (The agent retries timeouts and 5xx answers of these requests
      itself first, with the exponential_backoff_* keys; the storm this models happens before that.)
    - Every request gets AGENT_TIMEOUT; one that takes longer fails.
    """

    def __init__(self, client: PushClient, retry_seconds: float, journal: Journal, attestations: int | None = None):
        """`attestations`: stop after that many accepted ones (None: run until stopped)."""
        self.client, self.retry_seconds, self.journal = client, retry_seconds, journal
        self.attestations = attestations
        client.timeout = AGENT_TIMEOUT

    def _record(self, kind: str, sent: float, status: int, passed: bool, retry_after: float | None = None) -> None:
        self.journal.add(Request(self.client.uuid, kind, sent, status, passed, retry_after))

    def login(self, stop: threading.Event) -> bool:
        for attempt in range(LOGIN_ATTEMPTS):
            if attempt and stop.wait(LOGIN_RETRY_DELAY):
                return False
            sent = time.monotonic()
            try:
                self.client.authenticate()
            except ProtocolError as refused:
                self._record("session", sent, refused.status, False, refused.retry_after)
            except OSError:
                self._record("session", sent, 0, False)
            else:
                self._record("session", sent, 200, True)
                return True
        return False

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set, or the attestations asked for were accepted."""
        accepted = 0
        while not stop.is_set() and accepted != self.attestations:
            if self.client.token is None and not self.login(stop):
                stop.wait(self.retry_seconds)
                continue
            sent = time.monotonic()
            try:
                outcome = self.client.attest()
            except ProtocolError as refused:
                self._record("attestation", sent, refused.status, False)
                if refused.status in (401, 403):
                    self.client.token = None
                if refused.status != 401:
                    stop.wait(self.retry_seconds)
                continue
            except OSError:
                self._record("attestation", sent, 0, False)
                stop.wait(self.retry_seconds)
                continue
            self._record("attestation", sent, outcome.status, outcome.status == 202)
            accepted += outcome.status == 202
            if accepted != self.attestations:
                stop.wait(outcome.seconds_to_next)
