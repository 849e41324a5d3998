"""Where the pods' non-root users (UID 490) can read what the lab gives them, wherever the checkout is.

A checkout in a private directory (a mode 700 home) is out of reach of every other user, and so is the
keylime virtualenv in it. The lab keeps what those users read under a directory of its own that they
can reach: volumes, configs and certificates are written there, and the virtualenv is bind-mounted
there inside each process's private mount namespace, with its console scripts staged beside it,
pointing at the mounted copy (their own first line names the checkout's path).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

# Debian's /tmp, should TMPDIR point somewhere private.
FALLBACK_TEMP = Path("/tmp")


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can get to `path`: every directory on the way is o+x."""
    return all(os.stat(directory).st_mode & stat.S_IXOTH for directory in [path.resolve(), *path.resolve().parents])


def reachable_temp_dir(prefix: str) -> Path:
    """A new directory (mode 755) under TMPDIR if others can reach it there, else under /tmp."""
    default = Path(tempfile.gettempdir())
    base = default if reachable_by_others(default) else FALLBACK_TEMP
    if not reachable_by_others(base):
        raise RuntimeError(f"neither {default} nor {FALLBACK_TEMP} can be reached by other users; "
                           "set TMPDIR to a directory that can")
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    directory.chmod(0o755)
    return directory


def stage_console_scripts(venv_bin: Path, mounted_venv: Path, names: tuple[str, ...], target: Path) -> None:
    """Copy the console scripts `names` from `venv_bin` to `target`, run by `mounted_venv`'s interpreter."""
    target.mkdir(mode=0o755)
    for name in names:
        _, body = (venv_bin / name).read_text().split("\n", 1)
        script = target / name
        script.write_text(f"#!{mounted_venv / 'bin' / 'python'}\n{body}")
        script.chmod(0o755)
