#!/usr/bin/env bash
# The in-cluster PostgreSQL's password, generated once by the program (pulumi-random is not among its packages):
# 32 random bytes as unpadded base64url, 43 characters of A-Z a-z 0-9 - _, which sit in a database URL unescaped.
# Printed on stdout without a newline; the Command that runs this keeps stdout secret and never logs it.
set -euo pipefail

head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'
