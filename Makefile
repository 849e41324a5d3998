# Thin wrappers over pulumi and the test command; the verbs mirror the original POC's Makefile.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := venv
VALIDATORS_VENV := venv-validators
STACK ?= swtpm
# A local file backend needs a passphrase for secrets; one is generated per checkout, never committed.
export PULUMI_CONFIG_PASSPHRASE_FILE ?= $(CURDIR)/.pulumi-passphrase

.PHONY: setup swtpm hwtpm verify enroll clean test render

# What the enrollment script needs, read from the stack's outputs (the kubeconfig never reaches the terminal).
ENROLL_ENV = KUBECONFIG_DATA="$$(pulumi stack output infraKubeconfig --show-secrets --stack $(STACK))" \
	EXPECTED_AGENTS="$$(pulumi stack output agentCount --stack $(STACK))" \
	TPM_POLICY="$$(pulumi stack output tpmPolicy --stack $(STACK))"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

$(VALIDATORS_VENV)/.installed: requirements-validators.txt
	$(PYTHON) -m venv $(VALIDATORS_VENV)
	$(VALIDATORS_VENV)/bin/pip install --quiet -r requirements-validators.txt
	touch $@

$(PULUMI_CONFIG_PASSPHRASE_FILE):
	umask 077 && head -c 32 /dev/urandom | base64 > $@

setup: $(VENV)/.installed $(PULUMI_CONFIG_PASSPHRASE_FILE)
	for stack in swtpm hwtpm; do pulumi stack select --create --secrets-provider passphrase $$stack; done
	pulumi stack select swtpm

swtpm hwtpm: setup
	pulumi up --stack $@ --yes

# Re-check that every agent attests (exit 1 names each agent that does not, and why).
verify:
	$(ENROLL_ENV) components/scripts/enroll.py verify

# Enroll agents that registered since `pulumi up` (a recreated agent pod has a new TPM, so a new UUID).
enroll:
	$(ENROLL_ENV) components/scripts/enroll.py add

clean:
	for stack in swtpm hwtpm; do \
	  if pulumi stack select $$stack 2>/dev/null; then pulumi destroy --stack $$stack --yes; fi; \
	done

test: $(VENV)/.installed $(VALIDATORS_VENV)/.installed
	VALIDATORS_BIN=$(CURDIR)/$(VALIDATORS_VENV)/bin $(VENV)/bin/python -m pytest

render: $(VENV)/.installed
	$(VENV)/bin/python -m tools.render --stack $(STACK)
