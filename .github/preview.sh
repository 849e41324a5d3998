#!/usr/bin/env bash
# One stack's `pulumi preview --diff` with the policy pack, written as a PR comment; exits as the preview did,
# so a mandatory policy violation fails the check.
# Usage: preview.sh STACK COMMENT_FILE   (from the repository root, ./venv and policy/venv installed)
#
# SHARED_BACKEND_URL / SHARED_PASSPHRASE (the repository's PULUMI_BACKEND_URL and PULUMI_CONFIG_PASSPHRASE
# secrets, empty when unset or on a fork's pull request): with them, the preview runs against the deployed
# stack's state, so the diff is what merging would change. Without them, or when that backend has no such
# stack, it runs against an empty state on the runner, so everything shows as a create, and the comment says so.
# RUNNER_CONFIG_NOTE: set by a workflow step that changed the stack's configuration for the runner.
set -euo pipefail

stack="${1:?usage: $0 STACK COMMENT_FILE}"
comment="${2:?usage: $0 STACK COMMENT_FILE}"
output="$(mktemp)"
trap 'rm -f "${output}"' EXIT

throwaway_state() {
    # Pulumi.yaml's file://. backend, on this runner only; the passphrase guards nothing real.
    unset PULUMI_BACKEND_URL
    export PULUMI_CONFIG_PASSPHRASE="preview-on-a-throwaway-runner"
    pulumi stack select --create --secrets-provider passphrase "${stack}" --non-interactive
    if [[ "${stack}" == cluster ]]; then
        # The user's clusters are in the deployed stack's config only: preview on the example's placeholders.
        venv/bin/python -m tools.example "${stack}"
        example_note="This stack deploys onto the user's own clusters; here it was previewed with the example configuration (\`tools/example\`: placeholder clusters that do not exist), so nothing was checked against a real API server."
    fi
}

if [[ -n "${SHARED_BACKEND_URL:-}" && -z "${SHARED_PASSPHRASE:-}" ]]; then
    echo "preview.sh: the PULUMI_BACKEND_URL secret is set but PULUMI_CONFIG_PASSPHRASE is not;" \
        "the deployed stacks' secrets cannot be read without it" >&2
    exit 2
fi

if [[ -n "${SHARED_BACKEND_URL:-}" ]]; then
    export PULUMI_BACKEND_URL="${SHARED_BACKEND_URL}" PULUMI_CONFIG_PASSPHRASE="${SHARED_PASSPHRASE}"
    # Never create a stack in the shared backend from a pull request.
    if pulumi stack select "${stack}" --non-interactive; then
        state="Previewed against the deployed state of stack \`${stack}\` in the shared backend: the diff is what merging and running \`pulumi up\` would change."
    else
        throwaway_state
        state="The shared backend has no stack \`${stack}\` (not deployed yet), so this preview ran against an empty state on the runner: every resource shows as a create. The offline render diff shows what this change does."
    fi
else
    throwaway_state
    state="No shared backend is configured (repository secrets \`PULUMI_BACKEND_URL\` and \`PULUMI_CONFIG_PASSPHRASE\`; forks' pull requests never get them), so this preview ran against an empty state on the runner: every resource shows as a create. The offline render diff shows what this change does."
fi

example_note="${example_note:-}"
status=0
pulumi preview --stack "${stack}" --diff --non-interactive --color never --policy-pack policy >"${output}" 2>&1 || status=$?

{
    echo "### pulumi preview: ${stack}"
    echo
    echo "${state}"
    echo
    if [[ -n "${example_note}" ]]; then
        echo "${example_note}"
        echo
    fi
    if [[ -n "${RUNNER_CONFIG_NOTE:-}" ]]; then
        echo "${RUNNER_CONFIG_NOTE}"
        echo
    fi
    if ((status != 0)); then
        echo "**The preview failed (exit status ${status}).** A mandatory policy violation of the policy pack (\`policy/\`) fails it; the violations are listed at the end of the output."
    else
        echo "The policy pack (\`policy/\`) found no mandatory violation."
    fi
    echo
    echo "<details><summary>output</summary>"
    echo
    echo '```'
    # GitHub refuses comments over 65,536 characters: keep the end, where the summary and violations are.
    tail -c 60000 "${output}"
    echo '```'
    echo "</details>"
} >"${comment}"
cat "${output}"
exit "${status}"
