"""tools/cli_tools.py for real: downloads over HTTP from a server on 127.0.0.1 serving stand-in releases."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import threading
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import ROOT

from tools.cli_tools import ARCHITECTURES, PINS

ARCHITECTURE = ARCHITECTURES[platform.machine()]
PINNED = tomllib.loads(PINS.read_text())


def stand_in(output: str) -> bytes:
    """An executable that prints what the real tool's version command would (with the shell's printf: it needs no PATH)."""
    return f"#!/bin/sh\nprintf '%s\\n' '{output}'\n".encode()


def version_output(tool: str, version: str) -> str:
    return {
        "pulumi": f"v{version}",
        "kind": f"kind v{version} go1.23.6 linux/{ARCHITECTURE}",
        "kubectl": f"Client Version: v{version}\nKustomize Version: v5.5.0",
    }[tool]


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(content), 0o755
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


class Releases:
    """Stand-in releases served from a folder on 127.0.0.1, every request logged; and pins that point at them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests: list[str] = []
        releases = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                releases.requests.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, name: str, content: bytes) -> str:
        (self.folder / name).write_bytes(content)
        return hashlib.sha256(content).hexdigest()

    def pins(self, path: Path, versions: dict[str, str] | None = None, **overrides: dict[str, str]) -> Path:
        """A pins file for the three tools, as tools/cli-tools.toml has them, served here. `versions` sets what
        each stand-in reports (default: its pin); `overrides` replaces a tool's url or sha256."""
        versions = versions or {}
        lines = []
        for tool, pin in PINNED.items():
            reports = stand_in(version_output(tool, versions.get(tool, pin["version"])))
            if pin.get("archive_directory"):
                name = f"{tool}.tar.gz"
                files = {f"{pin['archive_directory']}/{tool}": reports,
                         f"{pin['archive_directory']}/{tool}-language-python": b"#!/bin/sh\n"}
                sha256 = self.publish(name, tarball(files))
            else:
                name = f"{tool}-linux-{ARCHITECTURE}"
                sha256 = self.publish(name, reports)
            download = {"url": f"{self.base}/{name}", "sha256": sha256, **overrides.get(tool, {})}
            table = {key: pin[key] for key in ("version", "version_args", "version_pattern", "archive_directory") if key in pin}
            # JSON's strings and arrays are TOML's too.
            lines += [f"[{tool}]", *(f"{key} = {json.dumps(value)}" for key, value in table.items()),
                      f"[{tool}.linux-{ARCHITECTURE}]", *(f"{key} = {json.dumps(value)}" for key, value in download.items())]
        path.write_text("\n".join(lines) + "\n")
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def releases(tmp_path):
    folder = tmp_path / "releases"
    folder.mkdir()
    served = Releases(folder)
    yield served
    served.close()


def setup_tools(tmp_path: Path, pins: Path, path_dirs: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m tools.cli_tools` with ./bin at tmp_path/bin, and on PATH only that and `path_dirs`
    (this machine's own pulumi, kind or kubectl must not count)."""
    path = os.pathsep.join([str(tmp_path / "bin"), *map(str, path_dirs)])
    return subprocess.run([sys.executable, "-m", "tools.cli_tools", "--bin", str(tmp_path / "bin"), "--pins", str(pins)],
                          cwd=ROOT, env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=120, check=False)


def reports(executable: Path, *args: str) -> str:
    return subprocess.run([str(executable), *args], capture_output=True, text=True, check=True).stdout


def test_a_verified_download_of_each_tool_lands_in_bin_and_a_second_run_downloads_nothing(releases, tmp_path):
    pins = releases.pins(tmp_path / "pins.toml")
    result = setup_tools(tmp_path, pins)
    assert result.returncode == 0, result.stderr
    assert sorted(releases.requests) == ["/kind-linux-" + ARCHITECTURE, "/kubectl-linux-" + ARCHITECTURE, "/pulumi.tar.gz"]
    assert reports(tmp_path / "bin" / "pulumi", "version").strip() == f"v{PINNED['pulumi']['version']}"
    assert reports(tmp_path / "bin" / "kind", "version").startswith(f"kind v{PINNED['kind']['version']} ")
    assert f"Client Version: v{PINNED['kubectl']['version']}" in reports(tmp_path / "bin" / "kubectl", "version", "--client")
    # The CLI's language plugins come with it, and nothing half-done is left behind.
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["kind", "kubectl", "pulumi", "pulumi-language-python"]
    assert result.stdout.count("sha256 verified") == 3
    again = setup_tools(tmp_path, pins)
    assert again.returncode == 0 and len(releases.requests) == 3


def test_a_download_whose_sha256_differs_from_the_pin_is_refused(releases, tmp_path):
    pins = releases.pins(tmp_path / "pins.toml", kind={"sha256": "0" * 64})
    result = setup_tools(tmp_path, pins)
    assert result.returncode == 1
    assert re.search(rf"kind: refused {releases.base}/kind-linux-{ARCHITECTURE}: its sha256 is [0-9a-f]{{64}}, "
                     rf"the pinned one \(tools/cli-tools.toml\) is 0{{64}}", result.stderr), result.stderr
    assert not (tmp_path / "bin" / "kind").exists()
    assert not [p for p in (tmp_path / "bin").iterdir() if p.name.startswith(".")]


def test_a_missing_release_fails_naming_the_url(releases, tmp_path):
    pins = releases.pins(tmp_path / "pins.toml", kubectl={"url": f"{releases.base}/v9.9.9/kubectl"})
    result = setup_tools(tmp_path, pins)
    assert result.returncode == 1
    assert f"kubectl: cannot download {releases.base}/v9.9.9/kubectl: HTTP Error 404" in result.stderr
    assert not (tmp_path / "bin" / "kubectl").exists()


def test_an_installed_tool_is_used_only_when_it_reports_the_pinned_version(releases, tmp_path):
    installed = tmp_path / "usr-local-bin"
    installed.mkdir()
    for tool, version in (("kind", "0.26.0"), ("kubectl", PINNED["kubectl"]["version"])):
        (installed / tool).write_bytes(stand_in(version_output(tool, version)))
        (installed / tool).chmod(0o755)
    result = setup_tools(tmp_path, releases.pins(tmp_path / "pins.toml"), (installed,))
    assert result.returncode == 0, result.stderr
    # kind 0.26.0 is not the pin: the pinned one is downloaded into ./bin, which comes first on PATH.
    assert f"/kind-linux-{ARCHITECTURE}" in releases.requests
    assert reports(tmp_path / "bin" / "kind", "version").startswith(f"kind v{PINNED['kind']['version']} ")
    # The installed kubectl is the pinned version: used as it is.
    assert f"/kubectl-linux-{ARCHITECTURE}" not in releases.requests
    assert (tmp_path / "bin" / "kubectl").resolve() == installed / "kubectl"


def test_a_download_that_reports_another_version_than_its_pin_is_refused(releases, tmp_path):
    pins = releases.pins(tmp_path / "pins.toml", versions={"pulumi": "3.1.0"})
    result = setup_tools(tmp_path, pins)
    assert result.returncode == 1
    pinned = PINNED["pulumi"]["version"]
    assert f"pulumi: {releases.base}/pulumi.tar.gz reports version 3.1.0, not the pinned {pinned}" in result.stderr
    assert not (tmp_path / "bin" / "pulumi").exists()


def test_the_pins_name_https_releases_of_their_version_for_both_architectures():
    for tool, pin in PINNED.items():
        for architecture in ARCHITECTURES.values():
            download = pin[f"linux-{architecture}"]
            assert download["url"].startswith("https://") and f"v{pin['version']}" in download["url"], tool
            assert re.fullmatch(r"[0-9a-f]{64}", download["sha256"]), tool


def test_the_readme_names_the_pinned_versions():
    readme = (ROOT / "README.md").read_text()
    for tool, label in (("pulumi", "Pulumi CLI"), ("kind", "kind"), ("kubectl", "kubectl")):
        assert f"{label} {PINNED[tool]['version']}" in readme, tool


def test_every_make_verb_finds_bin_first_and_setup_brings_the_tools(tmp_path):
    probe = subprocess.run(
        ["make", "--no-print-directory", "--eval", "path-probe: ; @echo $$PATH", "path-probe"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert probe.split(os.pathsep)[0] == str(ROOT / "bin")
    # A fresh ./bin, whatever this checkout's holds.
    setup = subprocess.run(
        ["make", "-n", "setup", f"BIN={tmp_path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"-m tools.cli_tools --bin {tmp_path}" in setup
    assert setup.index("-m tools.cli_tools") < setup.index("pulumi stack select")
