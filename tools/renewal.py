"""The certificates a `pulumi up` must replace now: those inside their early-renewal window.

Every certificate declares `early_renewal_hours`, but pulumi-tls does not always replace one by itself
once it is due (pulumi/pulumi-tls#39). `make renew` refreshes the stack, passes `pulumi stack export`
through this module and replaces what it names; the new certificates change the Secrets, and the
pods that read them roll (their templates carry a digest of what they read).

    pulumi stack export --stack swtpm | python -m tools.renewal    # one --replace=<urn> per due certificate
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

CERTIFICATES = ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert")


def due(export: dict[str, Any], now: datetime.datetime) -> list[str]:
    """URNs of the certificates that are ready for renewal at `now` (or that pulumi-tls already says are)."""
    found = []
    for resource in export["deployment"].get("resources", []):
        outputs = resource.get("outputs", {})
        if resource["type"] not in CERTIFICATES or "validityEndTime" not in outputs:
            continue
        end = datetime.datetime.fromisoformat(outputs["validityEndTime"].replace("Z", "+00:00"))
        window = datetime.timedelta(hours=outputs.get("earlyRenewalHours", 0))
        if outputs.get("readyForRenewal") or now >= end - window:
            found.append(resource["urn"])
    return found


def main() -> int:
    now = datetime.datetime.now(datetime.UTC)
    print(" ".join(f"--replace={urn}" for urn in due(json.load(sys.stdin), now)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
