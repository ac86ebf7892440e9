# The project's vocabulary. `make run` and `make test` need only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CORRAL_DATABASE_URL ?= sqlite:///./var/corral.db

.PHONY: run test lint bench docs proto install clean lab

# constraints.txt holds the exact versions of what the callback fast path
# depends on (uvicorn's private protocol class, httptools), as tested.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,power]'
	touch $(STAMP)

install: $(STAMP)

# A simulated lab of 20 boards on SQLite, timeouts 10x faster than production:
# `corral serve --simulate` (HTTP API on 127.0.0.1:8080, simulated power/ping/PXE)
# and `corral simulate boards` (the boards, reporting over HTTP with their tokens).
# Boards are health-checked before they are ready (a few at a time):
# sim-0020 has a dead relay and ends in failed_health; relay-2 stops answering
# from minute two for 90 s, and its boards wait as unknown until it is back
# (a canary is re-checked every 15 s, then 30, 60). A simulated MO
# (`corral mo-sim`) serves the ten pools of fabric `sim`, and `corral simulate
# runs` plays the test runs of alice and bob, leasing boards by rack and arch
# (a lease warns 10 s before it expires, and one that has waited 30 s keeps
# the boards it could use: leases here last seconds, not hours). Ctrl-C stops
# them all (and the runs release their leases).
# Watch it from a second terminal: .venv/bin/corral board list; .venv/bin/corral lease list
run: $(STAMP)
	$(BIN)/corral db upgrade
	$(BIN)/corral board import examples/simlab.yaml
	$(BIN)/corral pool create-fleet --fabric sim --count 10
	$(BIN)/corral mo-sim --listen 127.0.0.1:50051 --nodes-per-pool 4 --batch 1 --tick 2 & \
	CORRAL_TIMEOUT_SCALE=$${CORRAL_TIMEOUT_SCALE:-0.1} \
	CORRAL_SIM_DEAD_BOARDS=$${CORRAL_SIM_DEAD_BOARDS-sim-0020} \
	CORRAL_SIM_CONTROLLER_OUTAGE=$${CORRAL_SIM_CONTROLLER_OUTAGE-relay-2@120+90} \
	CORRAL_HEALTH_BACKOFF=$${CORRAL_HEALTH_BACKOFF:-15} \
	CORRAL_HEALTH_DIR=$${CORRAL_HEALTH_DIR:-examples/health} \
	CORRAL_LEASE_EXPIRY_WARNING=$${CORRAL_LEASE_EXPIRY_WARNING:-10} \
	CORRAL_LEASE_RESERVE_AFTER=$${CORRAL_LEASE_RESERVE_AFTER:-30} \
	$(BIN)/corral serve --simulate & \
	$(BIN)/corral simulate runs --owners alice,bob --url http://127.0.0.1:8080 & \
	$(BIN)/corral simulate boards --count 20 --url http://127.0.0.1:8080; \
	wait

# A lab of QEMU boards (one BIOS, one UEFI) that netboot what Corral writes,
# in var/lab, served on 127.0.0.1:8080 (see docs/lab.md for the Debian packages
# it needs). Reimage one from a second terminal:
#   .venv/bin/corral board event lab-bios-1 reimage
lab: $(STAMP)
	$(BIN)/corral lab up --dir var/lab

# Two test processes: most of the suite waits on servers, subprocesses and
# databases; then the tests that keep both cores busy (the lease crash test),
# on their own. `pytest -m "not slow"` runs the quick part alone.
test: $(STAMP)
	$(BIN)/pytest -q -n 2 -m "not alone"
	$(BIN)/pytest -q -m alone

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.callbacks
	$(BIN)/python -m bench.mariadb_engine
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.leases
	$(BIN)/python -m bench.health

# Regenerate the committed gRPC code from protos/ (a test checks it is current).
proto: $(STAMP)
	$(BIN)/python -m corral.mo.codegen

# Regenerate the diagrams in docs/ from statemachines/ (a test checks they are current).
docs: $(STAMP)
	$(BIN)/corral machines diagram board --update docs/state-machines.md
	$(BIN)/corral machines diagram pool --update docs/state-machines.md
	$(BIN)/corral machines diagram job --update docs/state-machines.md
	$(BIN)/python -m corral.jobs.reference --update docs/jobs.md

clean:
	rm -rf $(VENV) var .pytest_cache
