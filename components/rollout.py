"""Pod templates that change exactly when what their pods read changes.

Kubernetes restarts no pod when a ConfigMap or Secret it mounts changes. Each pod template therefore
carries a digest of everything its pods read from them: a new configuration, SAN, NodePort or renewed
certificate changes the template, and the Deployment or DaemonSet rolls its pods; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pulumi

INPUTS_ANNOTATION = "keylime-push.io/inputs-sha256"


def inputs_digest(documents: Mapping[str, Any]) -> str:
    """SHA-256 of `documents` (name -> the data a pod reads from it) as canonical JSON."""
    return hashlib.sha256(json.dumps(documents, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def inputs_annotation(documents: Mapping[str, pulumi.Input[Any]]) -> dict[str, pulumi.Output[str]]:
    """The pod template annotation for `documents`. Not secret although keys go in: a digest reveals
    nothing of them, and a rollout must show in `pulumi preview` as the change that causes it."""
    digest = pulumi.Output.from_input(documents).apply(inputs_digest)
    return {INPUTS_ANNOTATION: pulumi.Output.unsecret(digest)}
