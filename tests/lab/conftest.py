"""The lab's session: one `tools.lab.session.Lab` for the swtpm stack, shared by every lab test.

Everything is session-scoped and torn down at the end (servers by process group, the TPMs, the files).
Nothing here skips: a missing lab virtualenv or tool fails the tests with what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.lab.session import Lab, LabUnavailable

STACK = "swtpm"


def open_lab(**options) -> Lab:
    """A Lab for the swtpm stack (`options` as Lab takes them), or the test fails saying what is missing."""
    value = os.environ.get("LAB_BIN")
    if not value:
        pytest.fail("LAB_BIN is not set: run the tests with `make test`, which builds ./venv-lab from "
                    "requirements-lab.txt and passes LAB_BIN=$(CURDIR)/venv-lab/bin", pytrace=False)
    try:
        return Lab(STACK, Path(value), **options)
    except LabUnavailable as missing:
        pytest.fail(str(missing), pytrace=False)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    session = open_lab()
    yield session
    session.close()


@pytest.fixture(scope="session")
def program(lab):
    return lab.program


@pytest.fixture(scope="session")
def pki(lab):
    return lab.pki


@pytest.fixture(scope="session")
def infra(lab):
    return lab.infra


@pytest.fixture(scope="session")
def agent_ca(lab) -> Path:
    return lab.agent_ca


@pytest.fixture(scope="session")
def agent(lab):
    return lab.agent


@pytest.fixture(scope="session")
def registered_agent(lab):
    if not lab.agent.registered:
        lab.agent.register(lab.registrar_url)
    return lab.agent


@pytest.fixture(scope="session")
def kubectl_env(lab) -> dict[str, str]:
    return lab.kubectl_env


@pytest.fixture
def fresh(infra, registered_agent):
    """The agent starts not enrolled, and leaves with its TPM power-cycled (PCRs back to their power-on values)."""
    from .steps import verifier_view

    if verifier_view(infra, registered_agent.uuid) is not None:
        result = infra.tenant("-c", "delete", "-u", registered_agent.uuid, "--push-model")
        assert result.returncode == 0, result.stdout + result.stderr
    yield
    registered_agent.reboot()


@pytest.fixture(scope="session")
def synthetic_refstate(lab) -> str:
    """The reference state keylime-policy makes from the swtpm stack's synthetic boot (what `make mb-policy` prints)."""
    import subprocess
    import tempfile

    from components import boot_log

    with tempfile.NamedTemporaryFile(suffix=".bin") as log:
        log.write(boot_log.encode(boot_log.synthetic_boot()))
        log.flush()
        result = subprocess.run([str(lab.lab_bin / "keylime-policy"), "create", "measured-boot", "-e", log.name, "-o", "-"],
                                capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout
