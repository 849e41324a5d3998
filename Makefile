# Thin wrappers over pulumi and the test command; the verbs mirror the original POC's Makefile.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := venv
VALIDATORS_VENV := venv-validators
LAB_VENV := venv-lab
# The policy pack's own virtualenv, where PulumiPolicy.yaml points Pulumi.
POLICY_VENV := policy/venv
# keylime imports `gpg`, which is not on PyPI: Debian's python3-gpg is linked into the lab's virtualenv, so
# that virtualenv is made from Debian's own python3 (a pyenv one may differ, or sit where UID 490 cannot reach).
LAB_PYTHON ?= /usr/bin/python3
GPG_BINDINGS := /usr/lib/python3/dist-packages/gpg
STACK ?= swtpm
# The pinned CLIs that `make setup` brings into ./bin (tools/cli-tools.toml) come before any other.
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
# A local file backend needs a passphrase for secrets; one is generated per checkout, never committed.
export PULUMI_CONFIG_PASSPHRASE_FILE ?= $(CURDIR)/.pulumi-passphrase

.PHONY: setup swtpm hwtpm cluster verify enroll renew clean test render preflight preview policy system-packages mb-policy vm-boot-log bench

# What the enrollment script needs, read from the stack's outputs (the kubeconfig never reaches the terminal).
ENROLL_ENV = KUBECONFIG_DATA="$$(pulumi stack output infraKubeconfig --show-secrets --stack $(STACK))" \
	KUBE_CONTEXT="$$(pulumi stack output infraContext --stack $(STACK))" \
	EXPECTED_AGENTS="$$(pulumi stack output agentCount --stack $(STACK))" \
	TPM_POLICY="$$(pulumi stack output tpmPolicy --stack $(STACK))" \
	MB_POLICY="$$(pulumi stack output mbPolicy --stack $(STACK))"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

$(VALIDATORS_VENV)/.installed: requirements-validators.txt
	$(PYTHON) -m venv $(VALIDATORS_VENV)
	$(VALIDATORS_VENV)/bin/pip install --quiet -r requirements-validators.txt
	touch $@

# The real keylime servers and tenant that tests/lab runs. Debian's gpg bindings are built for one Python
# ABI; linked into a virtualenv of another Python they would not import, so refuse that outright.
$(LAB_VENV)/.installed: requirements-lab.txt
	suffix="$$($(LAB_PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"; \
	if [[ ! -f "$(GPG_BINDINGS)/__init__.py" ]]; then \
	  echo "$(LAB_VENV): $(GPG_BINDINGS) is missing: apt-get install python3-gpg" >&2; exit 1; \
	elif ! compgen -G "$(GPG_BINDINGS)/_gpgme$${suffix}" >/dev/null; then \
	  echo "$(LAB_VENV): $(GPG_BINDINGS) has no _gpgme$${suffix}: python3-gpg was built for another Python than" \
	    "$(LAB_PYTHON) ($$($(LAB_PYTHON) --version)); point LAB_PYTHON at the python3 python3-gpg belongs to" >&2; exit 1; \
	fi
	rm -rf $(LAB_VENV)
	$(LAB_PYTHON) -m venv $(LAB_VENV)
	$(LAB_VENV)/bin/pip install --quiet -r requirements-lab.txt
	ln -sfn $(GPG_BINDINGS) "$$($(LAB_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpg"
	$(LAB_VENV)/bin/python -c 'import gpg, keylime'
	touch $@

$(POLICY_VENV)/.installed: policy/requirements.txt
	$(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/pip install --quiet -r policy/requirements.txt
	touch $@

$(PULUMI_CONFIG_PASSPHRASE_FILE):
	umask 077 && head -c 32 /dev/urandom | base64 > $@

# Pulumi CLI, kind and kubectl as pinned, each download checked against its sha256 (needs only Python's stdlib).
$(BIN)/.installed: tools/cli-tools.toml
	$(PYTHON) -m tools.cli_tools --bin $(BIN)
	touch $@

setup: $(VENV)/.installed $(BIN)/.installed $(PULUMI_CONFIG_PASSPHRASE_FILE)
	for stack in swtpm hwtpm cluster; do pulumi stack select --create --secrets-provider passphrase $$stack; done
	pulumi stack select swtpm

swtpm hwtpm cluster: setup
	pulumi up --stack $@ --yes

# What `pulumi up` would change, judged by the policy pack: a mandatory violation fails the preview.
preview: setup $(POLICY_VENV)/.installed
	pulumi preview --stack $(STACK) --diff --policy-pack policy

# The same pack on the program evaluated under mocks: no Pulumi CLI, no cluster, no state.
policy: $(VENV)/.installed
	$(VENV)/bin/python -m tools.policy_check --stack $(STACK)

# Re-check that every agent attests (exit 1 names each agent that does not, and why).
verify:
	$(ENROLL_ENV) components/scripts/enroll.py verify

# Enroll agents that registered since `pulumi up` (a recreated agent pod has a new TPM, so a new UUID).
enroll:
	$(ENROLL_ENV) components/scripts/enroll.py add

# The Kind and VM stacks only: the cluster stack runs on your own clusters, and is destroyed only on purpose.
clean:
	for stack in swtpm hwtpm; do \
	  if pulumi stack select $$stack 2>/dev/null; then pulumi destroy --stack $$stack --yes; fi; \
	done

# The Debian packages in system-packages.txt: as root the missing ones are installed, otherwise the
# apt-get command that would is printed. Listed first where needed: make builds prerequisites in order.
system-packages:
	tools/system-packages.sh system-packages.txt

test: system-packages $(VENV)/.installed $(VALIDATORS_VENV)/.installed $(LAB_VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	VALIDATORS_BIN=$(CURDIR)/$(VALIDATORS_VENV)/bin LAB_BIN=$(CURDIR)/$(LAB_VENV)/bin $(VENV)/bin/python -m pytest

# Before a long `pulumi up`: the stack's servers, certificates and policies, tried for real in seconds;
# MB_POLICY_FILE=<reference state> tries it as mbPolicy, EVENT_LOG=<binary_bios_measurements> boots the
# agent's TPM with that log instead of the synthetic one.
preflight: system-packages $(VENV)/.installed $(LAB_VENV)/.installed
	LAB_BIN=$(CURDIR)/$(LAB_VENV)/bin $(VENV)/bin/python -m tools.preflight --stack $(STACK) \
	  $(foreach setting,$(SET),--set '$(setting)') $(if $(MB_POLICY_FILE),--mb-policy '$(MB_POLICY_FILE)') \
	  $(if $(EVENT_LOG),--event-log '$(EVENT_LOG)')

# The hwtpm VM's UEFI event log, as read after it booted: make vm-boot-log > vm-boot.bin
vm-boot-log:
	@pulumi stack output vmBootLog --stack hwtpm | base64 --decode

# A measured-boot reference state (keylime's own keylime-policy) for keylime-push:mbPolicy, from EVENT_LOG
# (a known-good machine's binary_bios_measurements) or, without it, from the swtpm stack's synthetic boot.
mb-policy: $(VENV)/.installed $(LAB_VENV)/.installed
	@log="$(EVENT_LOG)"; \
	if [[ -z "$${log}" ]]; then log="$$(mktemp)"; trap 'rm -f "$${log}"' EXIT; $(VENV)/bin/python -m tools.boot_log --out "$${log}"; fi; \
	$(LAB_VENV)/bin/keylime-policy create measured-boot -e "$${log}" -o - $(MB_POLICY_FLAGS)

# Replace every certificate inside its early-renewal window (pulumi-tls does not always do it by itself,
# pulumi/pulumi-tls#39); the pods that read them roll with them.
renew: $(VENV)/.installed
	pulumi refresh --stack $(STACK) --yes
	replace="$$(pulumi stack export --stack $(STACK) | $(VENV)/bin/python -m tools.renewal)"; \
	if [[ -n "$${replace}" ]]; then pulumi up --stack $(STACK) --yes $${replace}; else echo "no certificate is due"; fi

# Attestations per second that one and two verifier processes sustain on PostgreSQL (README: Capacity).
# Not part of `make test` (tests/lab/test_bench.py runs it briefly); runs in a private network namespace.
BENCH_AGENTS ?= 8
BENCH_SECONDS ?= 30
bench: $(VENV)/.installed $(LAB_VENV)/.installed
	unshare --net sh -c 'ip link set lo up && LAB_BIN=$(CURDIR)/$(LAB_VENV)/bin $(VENV)/bin/python -m tools.bench \
	  --agents $(BENCH_AGENTS) --seconds $(BENCH_SECONDS) --json bench.json'

render: $(VENV)/.installed
	$(VENV)/bin/python -m tools.render --stack $(STACK)
