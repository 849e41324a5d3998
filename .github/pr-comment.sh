#!/usr/bin/env bash
# Post BODY_FILE on the pull request as the comment tagged KEY, replacing that comment if it exists, so
# each stack's preview and the render diff keep one comment each however often the PR is pushed.
# Usage: pr-comment.sh KEY BODY_FILE   (env: GH_TOKEN, GITHUB_REPOSITORY, PR_NUMBER)
set -euo pipefail

key="${1:?usage: $0 KEY BODY_FILE}"
body_file="${2:?usage: $0 KEY BODY_FILE}"
: "${GITHUB_REPOSITORY:?}" "${PR_NUMBER:?}"
marker="<!-- keylime-push ${key} -->"
body="${marker}"$'\n'"$(cat "${body_file}")"

existing="$(gh api --paginate "repos/${GITHUB_REPOSITORY}/issues/${PR_NUMBER}/comments" \
    --jq ".[] | select(.body | startswith(\"${marker}\")) | .id" | tail -n 1)"
if [[ -n "${existing}" ]]; then
    gh api --method PATCH "repos/${GITHUB_REPOSITORY}/issues/comments/${existing}" -f body="${body}" >/dev/null
else
    gh api --method POST "repos/${GITHUB_REPOSITORY}/issues/${PR_NUMBER}/comments" -f body="${body}" >/dev/null
fi
