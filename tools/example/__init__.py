"""The cluster stack's example config: what the offline render and the tests deploy onto two example clusters.

The servers go to `datacenter`; agents run on the TPM nodes of `datacenter` and `edge`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tools.offline import Secret

HERE = Path(__file__).resolve().parent

CLUSTER: dict[str, object] = {
    "kubeconfig": Secret((HERE / "kubeconfig.yaml").read_text()),
    "serverContext": "datacenter",
    "agentContexts": ["datacenter", "edge"],
    "advertisedAddress": "keylime.example.com",
    "imageRegistry": "registry.example.com/keylime-push",
    "ekTrustBundle": (HERE / "ek-ca.pem").read_text(),
}


# The stacks whose real config only the deployed stack has: rendered and previewed with these.
EXAMPLES: dict[str, dict[str, object]] = {"cluster": CLUSTER}


def with_example(stack: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """`overrides` on top of the stack's example config (none for the stacks whose files are complete)."""
    return {**EXAMPLES.get(stack, {}), **(overrides or {})}


def cluster_config(**overrides: object) -> dict[str, object]:
    """The example cluster config with `overrides` on top."""
    return {**CLUSTER, **overrides}
