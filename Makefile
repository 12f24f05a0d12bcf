# Every target bootstraps .venv itself: on a fresh Debian machine `make storm` and `make test` are enough.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: venv storm test test-stress lint regression nightly soak smoke bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install -y python3-venv)"; exit 1; }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $(STAMP)

# The main job: a storm on this host (a real spdk_tgt if one is found, else the reference target, loudly).
storm: venv
	$(VENV)/bin/lvol-storm run $(ARGS)

# The harness's own tests, conformance replays and end-to-end runs against the reference target.
test: venv
	$(VENV)/bin/ruff check harness suites tests bench conftest.py terraform/qemu/scripts
	$(PY) -m pytest tests -q $(ARGS)

# The suite twice at once on this machine (CI runs right after a session, often while other work winds down):
# a test that fails here depends on timing or on machine-wide state, and will flake in CI. Logs in .stress/.
test-stress: venv
	@mkdir -p .stress
	@echo "test-stress: two test runs at once; logs in .stress/a.log and .stress/b.log"
	@( $(PY) -m pytest tests -q $(ARGS) > .stress/a.log 2>&1; echo $$? > .stress/a.rc ) & \
	 ( $(PY) -m pytest tests -q $(ARGS) > .stress/b.log 2>&1; echo $$? > .stress/b.rc ) & wait
	@tail -n 3 .stress/a.log .stress/b.log
	@[ "$$(cat .stress/a.rc)" = 0 ] && [ "$$(cat .stress/b.rc)" = 0 ] || { grep -h '^FAILED' .stress/*.log; exit 1; }

# The suites (docs/SUITES.md). Each writes runs/<time>-<suite>/ with junit.xml, summary.json, report.html.
# regression, nightly and soak refuse the reference target unless ARGS has --target sim.
INVENTORY ?=
# regression fails fast: it stops at the first race that fails (ARGS="--maxfail=0" runs every race anyway).
regression: venv
	$(PY) -m pytest suites/regression --maxfail=1 $(ARGS)

nightly: venv
	$(PY) -m pytest suites/nightly $(if $(INVENTORY),--inventory $(INVENTORY)) $(ARGS)

soak: venv
	$(PY) -m pytest suites/soak $(if $(INVENTORY),--inventory $(INVENTORY)) $(ARGS)

smoke: venv
	$(PY) -m pytest suites/smoke $(ARGS)

# Benchmarks (docs/BENCHMARKS.md): one table of figures against their goals, ~25 min; ARGS="--quick" for seconds.
bench: venv
	$(PY) -m bench $(ARGS)

lint: venv
	$(VENV)/bin/ruff check harness suites tests bench conftest.py terraform/qemu/scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict terraform/qemu/scripts/guest_image.py

clean:
	rm -rf $(VENV) runs
