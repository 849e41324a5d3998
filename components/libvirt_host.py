"""How the program reaches the libvirt host itself (not the VM): for reading the swtpm local CA that signs the
vTPM's EK certificate (components/scripts/swtpm-localca-issuer.sh). Pure: settings.py checks a URI with it."""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

REACHABLE = "a local qemu:///system or qemu:///session, or qemu+ssh://[user@]host[:port]/..."


def localca_reader(libvirt_uri: str) -> str:
    """The command that runs swtpm-localca-issuer.sh (given as its stdin) where libvirt runs swtpm_setup: here for a
    local connection, over ssh to the libvirt host (as libvirt's own ssh transport dials it) for qemu+ssh. Other
    transports (tcp, tls) give no shell on the host: ValueError."""
    uri = urlsplit(libvirt_uri)
    mode = uri.path.strip("/")
    if uri.scheme in ("qemu", "qemu+unix") and not uri.hostname:
        return shlex.join(["bash", "-s", "--", mode])
    if uri.scheme == "qemu+ssh" and uri.hostname:
        target = f"{uri.username}@{uri.hostname}" if uri.username else uri.hostname
        port = ["-p", str(uri.port)] if uri.port else []
        return shlex.join(["ssh", "-o", "BatchMode=yes", *port, target, "bash", "-s", "--", mode])
    raise ValueError(f"no shell on the libvirt host of {libvirt_uri}; allowed: {REACHABLE}")
