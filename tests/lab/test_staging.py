"""A checkout in a private directory: the pods' user still runs keylime from its virtualenv."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tools.lab.servers import KeylimeInfra

pytestmark = pytest.mark.lab


@pytest.fixture
def private_lab_bin(lab):
    """The lab's virtualenv seen through a mode 700 directory, like a checkout in a home directory."""
    private = Path(tempfile.mkdtemp(prefix="keylime-private-"))
    (private / "venv-lab").symlink_to(lab.lab_bin.parent.resolve())
    yield private / "venv-lab" / "bin"
    shutil.rmtree(private)


def test_the_tenant_runs_as_its_pod_user_from_a_virtualenv_that_user_cannot_reach(lab, infra, registered_agent,
                                                                                   private_lab_bin):
    uid, gid, _ = infra.pods["tenant"].user("tenant")
    unreachable = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                                  "test", "-x", str(private_lab_bin / "python")], check=False)
    assert unreachable.returncode != 0, "the private directory is reachable: the test would prove nothing"
    staged = KeylimeInfra(lab.root / "private-checkout", private_lab_bin, lab.infra_cluster, lab.pki.real)
    result = staged.tenant("-c", "reglist")
    assert result.returncode == 0, result.stdout + result.stderr
    assert registered_agent.uuid in result.stdout
