# Every target works on a fresh machine: `setup` installs what the others need.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test lint fmt emulator azurite demo run bench soak

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed node_modules/.installed local.settings.json ## Create .venv, install Python and npm dependencies, local.settings.json (quick when nothing changed)

# Core Tools and the CLI read local.settings.json; it is yours to edit, so it is made only if missing.
local.settings.json:
	cp local.settings.example.json $@

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: setup ## Run the test suite (starts Azurite if none is listening, stops only what it started)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## ruff check and format check; azure-functions-doctor on the app and infra/ (Flex Consumption checks)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/azure-functions-doctor doctor --path . --profile deploy

fmt: setup ## Apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

emulator: setup ## Run the gpt-image deployment emulator in the foreground (EMULATOR_* env vars or ARGS="...")
	$(PY) -m emulators.image_deployment $(ARGS)

azurite: setup ## Run Azurite in the foreground, in memory (ARGS="--persist DIR --blob-port N ..."; ARGS=--help)
	$(PY) -m devtools azurite $(ARGS)

demo: setup ## The main job end to end: Azurite (in memory), emulator, host and the downstream sample; three requests; results in ./out/<id>/; then it stops
	$(PY) -m devtools.demo $(ARGS)

run: setup ## Azurite (data kept in .azurite/), emulator, host and the downstream sample, until Ctrl-C (ARGS="--time-scale 0.1 ..."; ARGS=--help)
	$(PY) -m devtools.stack $(ARGS)

bench: setup ## Benchmarks (SSE decoding, end to end, quota use, memory): tables, never a pass/fail (ARGS="NAME [options]"; ARGS=--help)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	$(PY) -m bench $(ARGS)

soak: setup ## Crash soak: 300 requests, two hosts, 2 SIGKILLs mid-stream, a 10 s Azurite outage; prints counts (ARGS="--ci" for 90)
	$(PY) -m devtools.soak $(ARGS)
