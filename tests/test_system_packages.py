"""tools/system-packages.sh, run for real as root and as another user, with stand-ins for dpkg-query and apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT

from tools.lab.staging import reachable_temp_dir

SCRIPT = ROOT / "tools" / "system-packages.sh"
PACKAGE_LIST = ROOT / "system-packages.txt"
FAKES = ROOT / "tests" / "fakes" / "debian"
NOBODY = 65534


def listed_packages() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in PACKAGE_LIST.read_text().splitlines())
    return [line for line in lines if line]


class Machine:
    """The script, the list and the stand-ins staged where another user can run them; dpkg's database as a file."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copyfile(SCRIPT, root / SCRIPT.name)
        shutil.copyfile(PACKAGE_LIST, root / PACKAGE_LIST.name)
        shutil.copytree(FAKES, root / "bin")
        self.state = root / "state"
        self.state.mkdir()
        (self.state / "dpkg-status").touch()
        os.chown(self.state, NOBODY, NOBODY)
        for path in [root / SCRIPT.name, *(root / "bin").iterdir()]:
            path.chmod(0o755)

    def installed(self, *packages: str, status: str = "installed") -> None:
        with (self.state / "dpkg-status").open("a") as database:
            database.writelines(f"{package} {status}\n" for package in packages)

    def check(self, as_root: bool = True, **extra: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.root / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "FAKE_STATE": str(self.state), **extra}
        argv = [str(self.root / SCRIPT.name), str(self.root / PACKAGE_LIST.name)]
        if not as_root:
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)

    def apt_calls(self) -> list[str]:
        log = self.state / "apt-calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def machine():
    root = reachable_temp_dir("keylime-push-packages-")
    yield Machine(root)
    shutil.rmtree(root)


def test_the_list_names_what_the_lab_and_the_tests_run():
    assert set(listed_packages()) >= {"swtpm", "swtpm-tools", "tpm2-tools", "python3-gpg", "python3-venv", "cloud-init"}


def test_as_root_it_installs_exactly_the_missing_packages_noninteractively(machine):
    everything = listed_packages()
    machine.installed(*everything[2:])
    machine.installed(everything[3], status="config-files")  # removed, its configuration kept: not installed
    result = machine.check()
    assert result.returncode == 0, result.stderr
    missing = " ".join([*everything[:2], everything[3]])
    assert machine.apt_calls() == [
        "apt-get update (DEBIAN_FRONTEND=noninteractive)",
        f"apt-get install -y --no-install-recommends {missing} (DEBIAN_FRONTEND=noninteractive)",
    ]
    again = machine.check()
    assert again.returncode == 0 and len(machine.apt_calls()) == 2


def test_as_another_user_it_prints_the_one_install_command_and_fails(machine):
    machine.installed(*listed_packages()[1:])
    result = machine.check(as_root=False)
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.endswith(f": apt-get install -y --no-install-recommends {listed_packages()[0]}")
    assert machine.apt_calls() == []


def test_nothing_is_run_or_printed_when_everything_is_installed(machine):
    machine.installed(*listed_packages())
    result = machine.check(as_root=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.apt_calls() == []


def test_a_failed_install_fails_the_check(machine):
    result = machine.check(FAKE_APT_FAIL="swtpm")
    assert result.returncode == 100
    assert "Unable to locate package swtpm" in result.stderr


def test_make_checks_the_packages_before_it_tests_or_runs_the_preflight():
    for verb, runs in (("test", "python -m pytest"), ("preflight", "tools.preflight")):
        dry_run = subprocess.run(["make", "-n", verb], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert "tools/system-packages.sh system-packages.txt" in dry_run, verb
        assert dry_run.index("tools/system-packages.sh") < dry_run.index(runs), verb
