"""What the program declares, read from one evaluation under mocks: the lab's only input.

Under mocks pulumi-tls outputs are placeholders (`tools.offline.fake_pem(kind, resource name)`), so every
declared value that is a key or certificate is one of those placeholders; `pki.py` maps each to a real PEM.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tools.offline import ProgramRun, fake_pem

# The outputs the recording mocks invent for each pulumi-tls resource, by attribute and PEM kind.
TLS_OUTPUTS = {
    "tls:index/privateKey:PrivateKey": {"privateKeyPem": "PRIVATE KEY", "publicKeyPem": "PUBLIC KEY"},
    "tls:index/selfSignedCert:SelfSignedCert": {"certPem": "CERTIFICATE"},
    "tls:index/certRequest:CertRequest": {"certRequestPem": "CERTIFICATE REQUEST"},
    "tls:index/locallySignedCert:LocallySignedCert": {"certPem": "CERTIFICATE"},
}


def tls_declarations(run: ProgramRun) -> list[dict[str, Any]]:
    """Every pulumi-tls resource: its type, name, exact inputs, and the placeholders standing for its outputs."""
    return [
        {
            "type": resource.type,
            "name": resource.name,
            "inputs": resource.plain,
            "outputs": {attribute: fake_pem(kind, resource.name) for attribute, kind in TLS_OUTPUTS[resource.type].items()},
        }
        for resource in run.resources
        if resource.type in TLS_OUTPUTS
    ]


@dataclasses.dataclass
class Cluster:
    """The Kubernetes objects the program sends to one cluster's provider, by (kind, metadata.name)."""

    provider: str
    objects: dict[tuple[str, str], dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise KeyError(f"the program declares no {kind} {name!r} in {self.provider}") from None

    def pod_spec(self, kind: str, name: str) -> dict[str, Any]:
        return self.get(kind, name)["spec"]["template"]["spec"]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [body for (k, _), body in self.objects.items() if k == kind]


def cluster(run: ProgramRun, provider: str) -> Cluster:
    """`provider` is the Kubernetes provider's resource name, e.g. `infra-k8s`."""
    objects = {}
    for resource in run.resources:
        if resource.type.startswith("kubernetes:") and resource.provider.split("::")[-2] == provider:
            body = resource.plain
            objects[(resource.type.rsplit(":", 1)[1], body["metadata"]["name"])] = body
    if not objects:
        raise KeyError(f"the program declares nothing through the provider {provider!r}")
    return Cluster(provider, objects)
