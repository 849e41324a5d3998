"""The pinned command-line tools `make setup` puts in ./bin: Pulumi, kind and kubectl (tools/cli-tools.toml).

    venv/bin/python -m tools.cli_tools [--bin DIR] [--pins FILE]

For each tool: the one in ./bin if it reports the pinned version; else one installed on PATH that
does (linked into ./bin, which the Makefile puts first on PATH); else the pinned release, downloaded,
refused unless its sha256 is the pinned one, and then required to report the pinned version too.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "tools" / "cli-tools.toml"
# `uname -m` -> the architecture the pins are published for.
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
DOWNLOAD_TIMEOUT = 120
VERSION_TIMEOUT = 30
CHUNK = 1 << 20


class SetupError(Exception):
    """A tool that cannot be put in place, and why."""


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    version: str
    version_args: tuple[str, ...]
    version_pattern: str
    url: str
    sha256: str
    # For an archive: the folder in it whose files all go into ./bin.
    archive_directory: str | None = None


def load_pins(path: Path, machine: str) -> list[Tool]:
    architecture = ARCHITECTURES.get(machine)
    if architecture is None:
        raise SetupError(f"no pinned tools for a {machine} machine, only for {', '.join(sorted(ARCHITECTURES))}")
    tools = []
    for name, pin in tomllib.loads(path.read_text()).items():
        download = pin[f"linux-{architecture}"]
        tools.append(Tool(name, pin["version"], tuple(pin["version_args"]), pin["version_pattern"],
                          download["url"], download["sha256"], pin.get("archive_directory")))
    return tools


def reported_version(tool: Tool, executable: Path) -> str | None:
    """The version `executable` reports, or None if it does not run or says no version."""
    try:
        result = subprocess.run([str(executable), *tool.version_args], capture_output=True, text=True,
                                timeout=VERSION_TIMEOUT, check=False,
                                env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(tool.version_pattern, result.stdout, re.MULTILINE)
    return match.group(1) if match else None


def download(tool: Tool, directory: Path) -> Path:
    """The pinned release in `directory`, its sha256 checked."""
    target = directory / PurePosixPath(urlsplit(tool.url).path).name
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(tool.url, timeout=DOWNLOAD_TIMEOUT) as response, target.open("wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        raise SetupError(f"{tool.name}: cannot download {tool.url}: {error}") from None
    if digest.hexdigest() != tool.sha256:
        raise SetupError(f"{tool.name}: refused {tool.url}: its sha256 is {digest.hexdigest()}, "
                         f"the pinned one (tools/cli-tools.toml) is {tool.sha256}")
    return target


def unpack(archive: Path, directory: str, into: Path) -> list[Path]:
    """The regular files directly in `directory` of a .tar.gz, written to `into` by their base names."""
    into.mkdir()
    files = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            source = tar.extractfile(member) if member.isfile() and path.parent == PurePosixPath(directory) else None
            if source is not None and path.name not in ("", ".", ".."):
                (into / path.name).write_bytes(source.read())
                files.append(into / path.name)
    return files


def install(tool: Tool, bin_dir: Path) -> None:
    """Download, verify and unpack the pinned release; it replaces what ./bin had only once it reports the pinned version."""
    with tempfile.TemporaryDirectory(prefix=f".{tool.name}-", dir=bin_dir) as scratch:
        fetched = download(tool, Path(scratch))
        if tool.archive_directory:
            files = unpack(fetched, tool.archive_directory, Path(scratch) / "unpacked")
        else:
            files = [fetched.rename(fetched.with_name(tool.name))]
        for file in files:
            file.chmod(0o755)
        main = next((file for file in files if file.name == tool.name), None)
        if main is None:
            raise SetupError(f"{tool.name}: {tool.url} has no {tool.archive_directory}/{tool.name}")
        version = reported_version(tool, main)
        if version != tool.version:
            raise SetupError(f"{tool.name}: {tool.url} reports version {version}, not the pinned {tool.version}")
        for file in files:
            target = bin_dir / file.name
            if target.is_symlink():
                target.unlink()
            os.replace(file, target)


def ensure(tool: Tool, bin_dir: Path, search_path: str) -> str:
    """Put the pinned version of `tool` in `bin_dir`; says where it came from."""
    local = bin_dir / tool.name
    if reported_version(tool, local) == tool.version:
        return f"{tool.name} {tool.version}: {local}"
    installed = shutil.which(tool.name, path=search_path)
    if installed is not None and reported_version(tool, Path(installed)) == tool.version:
        if local.exists() or local.is_symlink():
            local.unlink()
        local.symlink_to(installed)
        return f"{tool.name} {tool.version}: {installed}, already installed"
    install(tool, bin_dir)
    return f"{tool.name} {tool.version}: {local}, downloaded from {tool.url}, sha256 verified"


def path_without(directory: Path, path: str) -> str:
    """PATH without `directory`, so that an installed tool is looked for elsewhere."""
    return os.pathsep.join(entry for entry in path.split(os.pathsep) if entry and Path(entry).resolve() != directory.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=ROOT / "bin", help="where the tools go (default: ./bin)")
    parser.add_argument("--pins", type=Path, default=PINS, help="versions, URLs and sha256 (default: tools/cli-tools.toml)")
    args = parser.parse_args(argv)
    args.bin.mkdir(exist_ok=True)
    search_path = path_without(args.bin, os.environ.get("PATH", ""))
    try:
        for tool in load_pins(args.pins, platform.machine()):
            print(ensure(tool, args.bin, search_path), flush=True)
    except SetupError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
