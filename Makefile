# One-command set-up and the two jobs the README names.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tether-installed
APT_PACKAGES := libegl1 libgl1 libosmesa6 libgles2 libusb-1.0-0
EXTRAS := sim,ros,runtime,train,dev
export MUJOCO_GL ?= egl
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: install test test-slow test-load demo bench typecheck clean

install: $(STAMP)

# Re-runs only when packaging changes or a module is added/removed (folder mtimes): the strict
# editable install links each file, and a second `make install` does nothing.
PACKAGE_DIRS := core sim teleop teleop/recording dataset policy_runtime policy_runtime/runtime policy_runtime/training calibration ros2_ws/src/tether_ros/tether_ros
$(STAMP): pyproject.toml Makefile ros2_ws/src/tether_ros/setup.py scripts/system_deps.sh $(PACKAGE_DIRS)
	bash scripts/system_deps.sh $(APT_PACKAGES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]" --config-settings editable_mode=strict
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e ros2_ws/src/tether_ros --config-settings editable_mode=strict
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Rehearse and collect beside CPU hogs on every core; figures in runs/load/ (TETHER_LOAD_HOGS=0: idle).
test-load: install
	$(BIN)/python -m pytest -q -s -m slow tests/ros/test_load.py

# The main job: the whole ROS 2 graph rehearsed against the SO-101 twin.
demo: install
	$(BIN)/tether rehearse --robot so101 --task pick_place --source expert --episodes 20 --seed 0 --report runs/demo

# The core and the ROS 2 nodes (rclpy's wheels carry no type stubs: ignore_missing_imports in pyproject).
typecheck: install
	$(BIN)/python -m mypy -p tether
	$(BIN)/python -m mypy ros2_ws/src/tether_ros/tether_ros

clean:
	rm -rf $(VENV) build *.egg-info

bench: install
	$(BIN)/tether bench sim --json runs/bench/sim.json
