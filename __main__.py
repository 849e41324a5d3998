"""keylime-push: Keylime push-model attestation on Kind clusters (swtpm) or a vTPM VM (hwtpm)."""

import pulumi
import pulumi_tls as tls

from components.endpoints import SERVERS, dial, server_sans
from components.pki import KeylimePki, KeylimePkiArgs
from components.settings import load_settings

settings = load_settings()

# Default providers are disabled (Pulumi.yaml): each provider is declared once, here.
tls_provider = tls.Provider("tls")

pki = KeylimePki(
    "pki",
    KeylimePkiArgs(server_sans={server: server_sans(settings, server) for server in SERVERS}),
    pulumi.ResourceOptions(providers=[tls_provider]),
)

pulumi.export("tpmMode", settings.tpm_mode)
pulumi.export("registrarEndpoint", dial(settings, "agent", "registrar").url)
pulumi.export("verifierEndpoint", dial(settings, "agent", "verifier").url)
pulumi.export("caCertificate", pki.ca_cert_pem)
