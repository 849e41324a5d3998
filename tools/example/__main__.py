"""python -m tools.example STACK: give a throwaway Pulumi stack the example config (the PR preview's runner).

Only the cluster stack needs one: its kubeconfig, contexts and address are the user's, and a pull request's
preview without the deployed stack's state has none. Secrets are set with --secret.
"""

from __future__ import annotations

import subprocess
import sys

from tools.example import EXAMPLES
from tools.offline import PROJECT, Secret, config_string


def configure(stack: str) -> None:
    for key, value in EXAMPLES.get(stack, {}).items():
        secret = ["--secret"] if isinstance(value, Secret) else []
        argv = ["pulumi", "config", "set", "--stack", stack, *secret, f"{PROJECT}:{key}", "--", config_string(value)]
        subprocess.run(argv, check=True)


if __name__ == "__main__":
    configure(sys.argv[1])
