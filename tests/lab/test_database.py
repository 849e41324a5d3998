"""The in-cluster database's URL, as KeylimeDatabase composes it, served for real: keylime 7.14.3 runs on it.

The password comes from running components/scripts/generate-password.sh itself; the URL is the one the
component declares in its Secret (evaluated under mocks, the script's output standing in for the Command's
stdout). Debian's PostgreSQL serves that URL: its port, the role `keylime` with that password, owning the
database `keylime`; the Service's name resolves to it in the servers' /etc/hosts. Registrar and verifier
get the URL as KEYLIME_<SERVER>_DATABASE_URL, as the Secret gives it them.
"""

from __future__ import annotations

import re
import subprocess
from urllib.parse import urlsplit

import pytest
from helpers import ROOT, database_alone, kube_objects

from components import postgres

from .conftest import open_lab
from .steps import registrar_view

pytestmark = pytest.mark.lab

# Beside the session's lab (127.0.0.1) and the other modules' own.
ADDRESS = "127.0.3.1"


@pytest.fixture(scope="module")
def generated_password() -> str:
    result = subprocess.run([str(ROOT / postgres.PASSWORD_SCRIPT)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def composed(generated_password) -> dict[str, str]:
    """The Secret's data as the component declares it, with the real generated password."""
    run, _ = database_alone(generated_password)
    (secret,) = kube_objects(run, "Secret")
    return secret.plain["stringData"]


@pytest.fixture(scope="module")
def served(composed):
    lab = open_lab(listen_address=ADDRESS, database_url=composed[postgres.REGISTRAR_URL_KEY])
    try:
        lab.infra  # noqa: B018 (registrar and verifier started, or the test fails with their logs)
        yield lab
    finally:
        lab.close()


def test_the_generated_password_is_long_random_and_url_safe(generated_password):
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", generated_password), generated_password
    again = subprocess.run([str(ROOT / postgres.PASSWORD_SCRIPT)], capture_output=True, text=True, timeout=30, check=True)
    assert again.stdout != generated_password


def test_registrar_and_verifier_run_on_the_url_the_component_composes(served, composed, generated_password):
    url = composed[postgres.REGISTRAR_URL_KEY]
    assert composed[postgres.VERIFIER_URL_KEY] == url
    assert urlsplit(url).password == generated_password
    for server in ("registrar", "verifier"):
        assert served.infra.env(server)[f"KEYLIME_{server.upper()}_DATABASE_URL"] == url
    agent = served.new_agent("agent")
    agent.register(served.registrar_url)
    assert registrar_view(served.infra, agent.uuid)["regcount"] == 1
    # The registration is in the database the URL names, and the verifier made its own tables beside it.
    assert served.postgres.sql("SELECT agent_id FROM registrarmain", database="keylime").split() == [agent.uuid]
    assert served.postgres.sql("SELECT count(*) FROM verifiermain", database="keylime").strip() == "0"
