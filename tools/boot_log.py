"""The synthetic UEFI event log the swtpm stack's agents send when they attest their boot.

    venv/bin/python -m tools.boot_log --out boot.bin     # then: keylime-policy create measured-boot -e boot.bin

`make mb-policy` does both and prints the reference state for `keylime-push:mbPolicy`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components import boot_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where to write the binary_bios_measurements bytes")
    args = parser.parse_args(argv)
    args.out.write_bytes(boot_log.encode(boot_log.synthetic_boot()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
