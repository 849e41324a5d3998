#!/usr/bin/env bash
# Markdown for a PR comment: the offline render of each stack on BASE_SHA versus the working tree.
# Usage: render-diff.sh BASE_SHA   (run from the repository root, with ./venv installed)
set -euo pipefail

base_sha="${1:?usage: $0 BASE_SHA}"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
# A throwaway clone, not a worktree: nothing is registered in (or left behind in) this repository.
# --shared borrows this repository's objects, so any commit it has can be checked out.
git clone --quiet --shared --no-checkout "$(pwd)" "${work}/base"
git -C "${work}/base" checkout --quiet --detach "${base_sha}"

python="$(pwd)/venv/bin/python"
echo "### Offline render: what this change does to the declared resources"
for stack in swtpm hwtpm; do
    "${python}" -m tools.render --stack "${stack}" --out "${work}/head/${stack}" >/dev/null
    if ! (cd "${work}/base" && "${python}" -m tools.render --stack "${stack}" --out "${work}/base-render/${stack}" >/dev/null 2>&1); then
        mkdir -p "${work}/base-render/${stack}"  # the base branch had no render yet: everything is new
    fi
    echo
    echo "<details><summary>${stack}</summary>"
    echo
    echo '```diff'
    (cd "${work}" && diff -ruN "base-render/${stack}" "head/${stack}") | head -c 60000 || true
    echo '```'
    echo "</details>"
done
