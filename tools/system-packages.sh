#!/usr/bin/env bash
# Checks that the Debian packages listed in $1 (default: system-packages.txt) are installed. As root it
# installs the missing ones (apt-get, noninteractive); otherwise it prints the one command that would, and fails.
set -euo pipefail
list="${1:-$(dirname "$0")/../system-packages.txt}"

packages=()
while read -r package _; do
    if [[ -n "${package}" && "${package}" != \#* ]]; then
        packages+=("${package}")
    fi
done < "${list}"

if ! command -v dpkg-query >/dev/null; then
    echo "no dpkg-query: this needs Debian or Ubuntu, with these packages: ${packages[*]}" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    # Only "installed" counts: a removed package may still be known (config-files, not-installed).
    status="$(dpkg-query --show --showformat='${db:Status-Status}' "${package}" 2>/dev/null || true)"
    if [[ "${status}" != installed ]]; then
        missing+=("${package}")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

install=(apt-get install -y --no-install-recommends "${missing[@]}")
if [[ "$(id -u)" -ne 0 ]]; then
    echo "missing system packages; as root, run: ${install[*]}" >&2
    exit 1
fi
echo "installing the missing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
"${install[@]}"
