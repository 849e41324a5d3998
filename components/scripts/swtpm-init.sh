#!/usr/bin/env bash
# Give the pod's software TPM its identity once: an EK and an EK certificate (plus a platform
# certificate), signed by a local CA that lives in the same state directory. Keeping the local CA
# there, instead of swtpm's system-wide /var/lib/swtpm-localca, is what lets this run as the agent's
# own non-root user. With TPM_MANUFACTURER_CA_DIR (signkey.pem, issuercert.pem: the stack's "TPM
# manufacturer" CA) that CA signs, so the attestation controller can check EKs against it; without it
# swtpm_localca makes a CA of its own.
set -euo pipefail

state_dir="${SWTPM_STATE_DIR:?SWTPM_STATE_DIR must name the TPM state directory}"

if [[ -f "${state_dir}/tpm2-00.permall" ]]; then
    echo "swtpm state already initialised in ${state_dir}"
    exit 0
fi

localca_dir="${state_dir}/localca"
mkdir -p "${localca_dir}"
if [[ -n "${TPM_MANUFACTURER_CA_DIR:-}" ]]; then
    install -m 0600 "${TPM_MANUFACTURER_CA_DIR}/signkey.pem" "${localca_dir}/signkey.pem"
    install -m 0644 "${TPM_MANUFACTURER_CA_DIR}/issuercert.pem" "${localca_dir}/issuercert.pem"
fi
cat > "${localca_dir}/swtpm-localca.conf" <<CONF
statedir = ${localca_dir}
signingkey = ${localca_dir}/signkey.pem
issuercert = ${localca_dir}/issuercert.pem
certserial = ${localca_dir}/certserial
CONF
cat > "${localca_dir}/swtpm-localca.options" <<CONF
--platform-manufacturer keylime-push
--platform-version 2.1
--platform-model swtpm
CONF
cat > "${localca_dir}/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = ${localca_dir}/swtpm-localca.conf
create_certs_tool_options = ${localca_dir}/swtpm-localca.options
CONF

swtpm_setup --tpm2 \
    --tpmstate "${state_dir}" \
    --config "${localca_dir}/swtpm_setup.conf" \
    --createek --decryption --create-ek-cert --create-platform-cert \
    --pcr-banks sha256 \
    --display
echo "swtpm state initialised in ${state_dir}"
