# EdgeFleet: `make demo` and `make test` work on a fresh machine (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-all-dev

.PHONY: demo test setup lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all,dev]' --config-settings editable_mode=compat
	touch $(STAMP)

# MLServer (KServe v2) for the cloud-fallback tests: it pins fastapi<0.116, so it gets its own venv.
MLSERVER_VENV := .venv-mlserver
$(MLSERVER_VENV)/bin/mlserver:
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet 'mlserver==1.7.1' 'onnxruntime>=1.20'

# amqtt, a broker that speaks only MQTT 3.1.1, proves the hub and agent fall back from MQTT 5.
AMQTT_VENV := .venv-amqtt
$(AMQTT_VENV)/bin/amqtt:
	$(PYTHON) -m venv $(AMQTT_VENV)
	$(AMQTT_VENV)/bin/python -m pip install --quiet 'amqtt==0.12.1'

# The agent's fallback LiteRT import: tflite-runtime (built against numpy 1.x) on a device without ai-edge-litert.
TFLITE_VENV := .venv-tflite
$(TFLITE_VENV)/bin/python:
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install --quiet 'tflite-runtime==2.14.0' 'numpy>=1.26,<2' 'pydantic>=2.6,<3'

# apt-get waits for a lock held by another apt run (a parallel set-up, unattended-upgrades) instead of failing.
APT_GET := apt-get -o DPkg::Lock::Timeout=600

# Headless Chromium for the dashboard's browser tests: Debian's package, used as Playwright's executable.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then $(APT_GET) update -qq && $(APT_GET) install -y -qq chromium; \
	else echo "the dashboard tests need Debian's chromium: sudo apt-get install chromium"; exit 1; fi

# `systemd-analyze verify` checks the unit files in deploy/ (tests/ops).
SYSTEMD_ANALYZE := /usr/bin/systemd-analyze
$(SYSTEMD_ANALYZE):
	@if [ "$$(id -u)" = 0 ]; then $(APT_GET) update -qq && $(APT_GET) install -y -qq systemd; \
	else echo "the unit-file tests need systemd-analyze: sudo apt-get install systemd"; exit 1; fi

# HAProxy in front of hub replicas (tests/cluster/test_haproxy.py runs deploy/haproxy.cfg): Debian's package. The
# tests start their own haproxy; the service the package enables (and may start) is stopped and disabled
# (`|| true`: a container without systemd as init can only drop the unit's symlink).
HAPROXY := /usr/sbin/haproxy
$(HAPROXY):
	@if [ "$$(id -u)" = 0 ]; then $(APT_GET) update -qq && $(APT_GET) install -y -qq haproxy && \
		{ systemctl disable --now haproxy >/dev/null 2>&1 || true; }; \
	else echo "the load-balancer tests need Debian's haproxy: sudo apt-get install haproxy"; exit 1; fi

setup: $(STAMP) $(MLSERVER_VENV)/bin/mlserver $(AMQTT_VENV)/bin/amqtt $(TFLITE_VENV)/bin/python $(CHROMIUM) \
	$(SYSTEMD_ANALYZE) $(HAPROXY)

demo: $(STAMP)  # the demo needs the project venv only (setup adds the test-only side venvs and Debian packages)
	$(BIN)/edgefleet demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) $(AMQTT_VENV) $(TFLITE_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
