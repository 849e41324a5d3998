"""The keylime-push policy pack. Pulumi runs this file; the rules live in rules.py, where tests call them."""

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import POLICIES  # type: ignore[import-not-found]  # Pulumi runs the pack from policy/; mypy checks it as policy.rules

PolicyPack(name="keylime-push", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
