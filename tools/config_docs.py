"""Pulumi.yaml's config block and the README's config table, written from components/settings.py.

    python -m tools.config_docs           exit 1 naming each file that differs from the definition
    python -m tools.config_docs --write   rewrite them

Each key is defined once, as a field of `Settings`; the two files only show that definition. The
generated part of each file starts at a marker line and, in the README, ends at another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from components.settings import DECLARED_DEFAULTS, DEFAULTS, FIELDS, config_text, key_of

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILE = ROOT / "Pulumi.yaml"
README = ROOT / "README.md"
YAML_MARKER = "  # The keylime-push keys: generated from components/settings.py by `python -m tools.config_docs --write`.\n"
TABLE_START = "<!-- config table: generated from components/settings.py by `python -m tools.config_docs --write` -->\n"
TABLE_END = "<!-- end of the generated config table -->\n"


def pulumi_declarations() -> dict[str, dict[str, object]]:
    """Each key as Pulumi.yaml declares it: type, description, and the default when there is one."""
    declarations: dict[str, dict[str, object]] = {}
    for field in FIELDS.values():
        key = key_of(field)
        entry: dict[str, object] = {"type": key.pulumi_type}
        if key.pulumi_type == "array":
            entry["items"] = {"type": "string"}
        entry["description"] = field.description
        if field.alias in DECLARED_DEFAULTS:
            entry["default"] = DECLARED_DEFAULTS[field.alias]
        declarations[field.alias] = entry  # type: ignore[index]  # every field of Settings declares an alias
    return declarations


def project_file(current: str) -> str:
    """`current` (Pulumi.yaml) with everything after the marker line replaced by the declarations."""
    head, marker, _ = current.partition(YAML_MARKER)
    if not marker:
        raise ValueError(f"{PROJECT_FILE.name} has no line {YAML_MARKER.strip()!r}")
    block = yaml.safe_dump(pulumi_declarations(), sort_keys=False, width=1000, allow_unicode=True)
    return head + marker + "".join(f"  {line}\n" for line in block.splitlines())


def _default_cell(alias: str) -> str:
    field = next(f for f in FIELDS.values() if f.alias == alias)
    only_when = key_of(field).only_when
    if alias in DEFAULTS:
        return f"`{config_text(DEFAULTS[alias])}`"
    if only_when is not None:
        condition = FIELDS[only_when[0]].alias
        return f"none; required when {condition}={only_when[1]}"
    return "none; the stack files set it"


def config_table() -> str:
    rows = ["| key | what it sets, and what is allowed | default |", "|---|---|---|"]
    for field in FIELDS.values():
        description = (field.description or "").replace("|", "\\|").replace("<", "&lt;")
        # every field of Settings declares an alias
        rows.append(f"| `{field.alias}` | {description} | {_default_cell(field.alias)} |")  # type: ignore[arg-type]
    return "\n".join(rows) + "\n"


def readme(current: str) -> str:
    """`current` (README.md) with the text between the table markers replaced by the generated table."""
    head, start, rest = current.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not (start and end):
        raise ValueError(f"{README.name} needs the lines {TABLE_START.strip()!r} and {TABLE_END.strip()!r}")
    return head + start + config_table() + end + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the files instead of checking them")
    args = parser.parse_args(argv)
    stale = []
    for path, render in ((PROJECT_FILE, project_file), (README, readme)):
        current = path.read_text()
        wanted = render(current)
        if wanted != current:
            if args.write:
                path.write_text(wanted)
            else:
                stale.append(path.name)
    if stale:
        print(f"{', '.join(stale)} differ from components/settings.py: run python -m tools.config_docs --write",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
