"""Offline render, the `helm template` of this project: no Pulumi CLI, no cluster, no cloud.

    python -m tools.render --stack swtpm --out render/swtpm [--set agentClusters=4 ...]
    python -m tools.render --stack cluster        (onto the example clusters of tools/example)

Evaluates the program for a stack under mocks and writes
  manifests/<cluster>/<kind>-<namespace>-<name>.yaml  every Kubernetes object, per target cluster
  inventory.json                                      every resource: type, name, parent, provider,
                                                      dependencies and inputs, secrets redacted
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from components.settings import SettingsError
from tools.example import with_example
from tools.offline import Resource, redact, run_program

KUBERNETES_PREFIX = "kubernetes:"


def provider_name(resource: Resource) -> str:
    """`urn:...::pulumi:providers:kubernetes::agents-1-k8s::<id>` -> `agents-1-k8s`."""
    return resource.provider.split("::")[-2] if resource.provider else "default"


def kubernetes_objects(resources: list[Resource]) -> list[tuple[str, dict]]:
    """(cluster provider name, object) for every Kubernetes object, secrets redacted."""
    found = []
    for resource in resources:
        if resource.type.startswith(KUBERNETES_PREFIX) and resource.custom:
            found.append((provider_name(resource), redact(resource.inputs)))
    return found


def manifest_path(out: Path, cluster: str, obj: dict) -> Path:
    metadata = obj.get("metadata", {})
    namespace = metadata.get("namespace", "cluster")
    return out / "manifests" / cluster / f"{obj['kind'].lower()}-{namespace}-{metadata['name']}.yaml"


def write_manifests(resources: list[Resource], out: Path) -> int:
    """Every Kubernetes object of `resources` as out/manifests/<cluster>/<kind>-<namespace>-<name>.yaml."""
    objects = kubernetes_objects(resources)
    for cluster, obj in objects:
        path = manifest_path(out, cluster, obj)
        path.parent.mkdir(parents=True, exist_ok=True)
        # apiVersion and kind first, as people write manifests; the rest sorted, so renders diff cleanly.
        head = {key: obj[key] for key in ("apiVersion", "kind")}
        rest = {key: value for key, value in obj.items() if key not in head}
        path.write_text(yaml.safe_dump(head, sort_keys=False) + yaml.safe_dump(rest, sort_keys=True))
    return len(objects)


def render(stack: str, out: Path, overrides: Mapping[str, object]) -> tuple[int, int]:
    """The cluster stack renders onto the example clusters (tools/example), under any overrides given."""
    run = run_program(stack, with_example(stack, overrides))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    objects = write_manifests(run.resources, out)
    inventory = {
        "stack": stack,
        "resources": [r.inventory_entry() for r in run.resources],
        "outputs": {
            name: "[secret]" if output.secret else output.value for name, output in sorted(run.outputs.items())
        },
    }
    (out / "inventory.json").write_text(json.dumps(inventory, indent=2, sort_keys=True) + "\n")
    return len(run.resources), objects


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, choices=["swtpm", "hwtpm", "cluster"])
    parser.add_argument("--out", type=Path, help="output folder (default: render/<stack>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for this render, e.g. --set agentClusters=4")
    args = parser.parse_args(argv)
    out = args.out or Path("render") / args.stack
    try:
        resources, objects = render(args.stack, out, parse_overrides(args.overrides))
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"rendered stack {args.stack}: {resources} resources, {objects} Kubernetes objects -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
