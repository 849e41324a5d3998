"""An agent's TPM, initialised by the pod's own init container, registered and activated at the real registrar."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from helpers import ROOT

from tools.lab.agent import AK_HANDLE, SETUP_EK_HANDLE

from .steps import registrar_view

pytestmark = pytest.mark.lab


def test_the_init_container_certifies_an_ek_in_the_pods_tpm_with_the_repositorys_script(agent):
    script = Path(agent.pod.translate(agent.init["name"], agent.init["command"][-1]))
    assert script.read_bytes() == (ROOT / "components" / "scripts" / "swtpm-init.sh").read_bytes()
    assert "Successfully created EK certificate" in agent.init_output
    assert agent.ek_cert is not None


def test_the_agents_uuid_is_the_hash_of_the_ek_the_init_container_certified(agent):
    certified = agent.tpm("tpm2_readpublic", "-c", SETUP_EK_HANDLE, "-f", "pem", "-o", "certified.pem")
    assert certified.returncode == 0
    assert agent.uuid == hashlib.sha256((agent.workdir / "certified.pem").read_bytes()).hexdigest()


def test_the_registrar_lists_the_registered_agent(infra, registered_agent):
    result = infra.tenant("-c", "reglist")
    assert result.returncode == 0
    assert registered_agent.uuid in result.stdout


def test_the_registrar_holds_the_tpms_keys_after_activation(infra, registered_agent):
    # The registrar only shows an agent once it proved, by activating the credential, that its AK sits beside its EK.
    record = registrar_view(infra, registered_agent.uuid)
    registered_agent.tpm("tpm2_readpublic", "-c", AK_HANDLE, "-o", "ak-now.pub")
    assert record["aik_tpm"] == base64.b64encode((registered_agent.workdir / "ak-now.pub").read_bytes()).decode()
    assert base64.b64decode(record["ekcert"]) == registered_agent.ek_cert
    assert record["regcount"] == 1
