# dexhier developer entry points. `make setup` is idempotent: a second run is a quick no-op.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

# Headless MuJoCo rendering everywhere; ROS 2 discovery never leaves this machine.
export MUJOCO_GL ?= egl
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
# Debian runtime libraries: libusb for open3d, EGL/Mesa (software llvmpipe) for MuJoCo rendering.
APT_PKGS := libusb-1.0-0 libegl1 libgl1 libgles2 libegl-mesa0 libglx-mesa0 libgl1-mesa-dri libgomp1
TEST_ENV := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST PYTHONHASHSEED=0
PYTEST_ARGS ?=

.PHONY: setup sysdeps test test-all demo bench lint clean distclean

setup: sysdeps $(STAMP)

# Installs only what dpkg does not already report as installed, so a second run needs no network.
sysdeps:
	@missing=""; \
	if command -v dpkg >/dev/null 2>&1; then \
	  for p in $(APT_PKGS); do \
	    dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	  done; \
	fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "setup: installing Debian packages:$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "setup: warning: missing Debian packages (install them as root):$$missing" >&2; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the lock or the project metadata changed since the last successful install.
# editable_mode=compat puts the project root on sys.path, so a top-level package that gains its
# __init__.py later (perception/, policies/) is imported as a regular package without reinstalling.
ROS_PKG := robot_ws/src/dexhier_ros
$(STAMP): requirements.lock pyproject.toml $(ROS_PKG)/setup.py | $(PY)
	$(PY) -m pip install -r requirements.lock
	$(PY) -m pip install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	# The ROS nodes' package, so that its console scripts (the nodes) exist in the venv.
	$(PY) -m pip install --no-deps --no-build-isolation -e $(ROS_PKG) --config-settings editable_mode=compat
	touch $@

test: setup
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: setup
	$(TEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/dexhier demo

bench: setup
	$(VENV)/bin/dexhier bench twin --json
	$(VENV)/bin/dexhier bench lowlevel --episodes 0 --json
	$(VENV)/bin/dexhier bench subgoal --json
	$(VENV)/bin/dexhier bench ros --duration 60 --json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache MUJOCO_LOG.TXT
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
