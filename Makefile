# edged — the two commands that matter are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
LEGACY ?= .venv-legacy
OIP    ?= .venv-oip
TRITON ?= .venv-triton
PYTEST_ARGS ?=

.PHONY: help run test test-legacy test-oip test-arm64 test-systemd venv lint bench models install-service clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel
	$(PIP) install -e '.[test,tflite,dev]'
	@# systemd-python builds against libsystemd-dev; tests of that path skip where it cannot build
	@# tflite-runtime (cp311 wheels at most) beside numpy 2 exercises the real 'needs numpy<2' failure path
	-$(PIP) install 'tflite-runtime>=2.11' 2>/dev/null || echo "note: no tflite-runtime wheel for this Python; its numpy-2 test will skip"
	-$(PIP) install 'systemd-python>=234' 2>/dev/null || echo "note: systemd-python did not build (needs libsystemd-dev pkg-config); its tests will skip"
	touch $@

venv: $(VENV)/.stamp  ## create .venv with edged (editable), LiteRT and the test tools

run: venv  ## the main job: fog node on loopback, simulated sensors, both models, live decisions, summary
	$(PY) -m edged.demo

test: venv  ## run the test suite in .venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

$(LEGACY)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(LEGACY)
	$(LEGACY)/bin/python -m pip --disable-pip-version-check -q install -U pip setuptools wheel
	$(LEGACY)/bin/python -m pip --disable-pip-version-check -q install -e '.[test,tflite-legacy]'
	touch $@

test-legacy: $(LEGACY)/.stamp  ## runtime tests with tflite-runtime (numpy<2) instead of ai-edge-litert
	$(LEGACY)/bin/python -m pytest -q tests/test_runtime.py tests/test_models.py $(PYTEST_ARGS)

# mlserver and kserve pin their own fastapi/protobuf (kserve <6, hence onnx <1.19): a venv of their own, never .venv.
# Both share it, but not one process (their generated protobufs register the same symbols): the tests start them
# as servers. Cold: ~1 min of installs on 2 cores, ~15 s of tests.
$(OIP)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(OIP)
	$(OIP)/bin/python -m pip --disable-pip-version-check -q install -U pip setuptools wheel
	$(OIP)/bin/python -m pip --disable-pip-version-check -q install -e '.[test,oip-test]'
	touch $@

# PyTriton (a CPU tritonserver in a wheel) pins numpy 1.26 and protobuf 6: a third venv. Optional: where its wheel
# does not install, the Triton test skips. ~20 s cold.
$(TRITON)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/python -m pip --disable-pip-version-check -q install -U pip setuptools wheel
	$(TRITON)/bin/python -m pip --disable-pip-version-check -q install -e '.[test]'
	-$(TRITON)/bin/python -m pip --disable-pip-version-check -q install -e '.[test,oip-triton]' \
		|| echo "note: nvidia-pytriton did not install here; the Triton test will skip"
	touch $@

test-oip: $(OIP)/.stamp $(TRITON)/.stamp  ## the OIP fog back end against real MLServer, KServe and Triton servers (own venvs)
	$(OIP)/bin/python -m pytest -q -p no:cacheprovider tests/test_oip_*.py $(PYTEST_ARGS)
	$(TRITON)/bin/python -m pytest -q -p no:cacheprovider tests/test_oip_triton.py $(PYTEST_ARGS)

test-arm64:  ## the suite on an arm64 Pi OS-like userspace (Bookworm, qemu, Pi 4 cpuinfo) + daemon RSS (root)
	tests/platform/arm64.sh

test-systemd:  ## edged.service under a real systemd (nspawn): install, notify, watchdog, logs, fog (root)
	tests/platform/systemd.sh

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: venv  ## run every benchmark (prints tables, writes bench/results/*.json)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

models:  ## rebuild models/ from scratch (installs TensorFlow into .venv-train)
	$(PYTHON) -m venv .venv-train
	.venv-train/bin/python -m pip -q install -e '.[train,tflite]'
	.venv-train/bin/python models/build.py

install-service:  ## install edged as a systemd service on this device (sudo)
	sudo hw/install.sh

clean:
	rm -rf $(VENV) $(LEGACY) $(OIP) $(TRITON) .venv-train build *.egg-info .pytest_cache .mypy_cache .ruff_cache
