#!/usr/bin/env bash
# Print the certificate of the CA that signs the EK certificates of libvirt's vTPMs on this host: the
# swtpm local CA's issuer certificate ("issuercert" in its configuration). libvirt runs
#   swtpm_setup --tpm2 --tpm-state ... --vmid ... --createek --create-ek-cert --create-platform-cert ...
# when a domain's TPM state is first made, with no --config: swtpm_setup reads swtpm_setup.conf, whose
# create_certs_tool_config names swtpm_localca's configuration. On its first use swtpm_localca makes a root CA
# ("swtpm-localca-rootca") and, signed by it, the issuer ("swtpm-localca") that signs every EK certificate;
# an EK certificate is issued directly by the issuer, which is what the attestation controller's trust store
# holds (controller/ek.py), so the root is not printed.
#
# Usage: swtpm-localca-issuer.sh system|session
#   system   qemu:///system: swtpm_setup runs as libvirt's swtpm user and reads /etc/swtpm_setup.conf
#   session  qemu:///session: it runs as the connecting user and reads that user's configuration first
# SWTPM_SETUP_CONF names the swtpm_setup.conf to read instead. The local CA's directory is tss:root 0750 on
# Debian: a file this user cannot read is read with `sudo -n` (no password prompt), or the script fails
# naming it. Run it after the first domain with a TPM has started: the CA does not exist before.
set -euo pipefail

mode="${1:-}"
case "${mode}" in
system)
    default_setup_conf=/etc/swtpm_setup.conf
    ;;
session)
    default_setup_conf=/etc/swtpm_setup.conf
    for candidate in "${XDG_CONFIG_HOME:-}/swtpm_setup.conf" "${HOME:-}/.config/swtpm_setup.conf"; do
        if [[ "${candidate}" == /* && -f "${candidate}" ]]; then
            default_setup_conf="${candidate}"
            break
        fi
    done
    ;;
*)
    echo "usage: $0 system|session" >&2
    exit 64
    ;;
esac
setup_conf="${SWTPM_SETUP_CONF:-${default_setup_conf}}"

read_file() {
    if [[ -r "$1" ]]; then
        cat -- "$1"
    elif command -v sudo >/dev/null && sudo -n cat -- "$1" 2>/dev/null; then
        :
    else
        echo "swtpm-localca-issuer.sh: cannot read $1 (neither as $(id -un) nor with sudo -n): run pulumi as a user" \
            "who may read it, or allow that user \`sudo cat\` of it without a password" >&2
        exit 1
    fi
}

# The value of `key = value` in a swtpm configuration file (the last one wins, as in swtpm's own parser).
setting() {
    local key="$1" file="$2"
    read_file "${file}" | sed -n -E "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\\1/p" |
        tail -n 1
}

# swtpm expands ${VARIABLE} in these files with the environment of swtpm_setup, which this script does not have.
literal_path() {
    local value="$1" what="$2"
    if [[ -z "${value}" ]]; then
        echo "swtpm-localca-issuer.sh: ${what} is not set" >&2
        exit 1
    fi
    if [[ "${value}" == *'${'* ]]; then
        echo "swtpm-localca-issuer.sh: ${what} is ${value}: an environment variable of swtpm_setup's, which is not" \
            "known here; set SWTPM_SETUP_CONF to a copy with the path written out" >&2
        exit 1
    fi
    printf '%s\n' "${value}"
}

localca_conf="$(setting create_certs_tool_config "${setup_conf}")"
# swtpm_localca's own default when swtpm_setup passes no --configfile.
localca_conf="$(literal_path "${localca_conf:-/etc/swtpm-localca.conf}" "create_certs_tool_config in ${setup_conf}")"
issuer="$(setting issuercert "${localca_conf}")"
issuer="$(literal_path "${issuer}" "issuercert in ${localca_conf}")"

certificate="$(read_file "${issuer}")"
if [[ "${certificate}" != *"-----BEGIN CERTIFICATE-----"* ]]; then
    echo "swtpm-localca-issuer.sh: ${issuer} holds no PEM certificate" >&2
    exit 1
fi
printf '%s\n' "${certificate}"
