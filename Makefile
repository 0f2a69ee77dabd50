# iiot-gateway — `make run` and `make test` are the two commands that matter.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNDIR := .run
STAMP  := $(VENV)/.installed
RUNSTAMP := $(VENV)/.installed-run

SCREENSHOTS := $(RUNDIR)/screenshots

.PHONY: screenshot run test test-fast lint install install-run deps firmware bench soak powercut fuzz clean services-stop

# `make run` needs only the package and its runtime dependencies; the test and
# lint extras (mypy, ruff, hypothesis ...) come with `make test` and `make lint`.
$(RUNSTAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e .
	touch $(RUNSTAMP)

$(STAMP): pyproject.toml $(RUNSTAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,lint]'
	touch $(STAMP)

install-run: $(RUNSTAMP)
install: $(STAMP)

# Debian packages the tests and `make run` need (installed only when missing).
deps:
	ops/install-deps.sh

run: install-run
	@ops/services.sh start $(RUNDIR) 1883 8428
	@echo
	@echo "  Status page:     http://127.0.0.1:9108/   (or: $(BIN)/gateway status)"
	@echo "  Watch MQTT:      mosquitto_sub -v -t 'iiot/#'"
	@echo "  Watch the TSDB:  curl -s http://127.0.0.1:8428/api/v1/export --data-urlencode 'match[]={node=~\".+\"}'"
	@echo "                   (VictoriaMetrics shows a point about 10 s after it arrives)"
	@echo "  Buffers:         $(BIN)/gateway buffer stats --buffer-dir $(RUNDIR)/buffer"
	@echo "  Stop:            Ctrl-C stops the gateway; the broker and TSDB keep running"
	@echo "                   (make services-stop stops those started here)"
	@echo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/gateway run --config ops/local.toml --buffer-dir $(RUNDIR)/buffer

# The status page of a gateway whose source fails, with an alert firing, captured
# by headless Chromium without and with JavaScript; the second is the README's image.
screenshot: install-run
	$(BIN)/python ops/screenshot.py $(SCREENSHOTS) docs/img/status-page.png

services-stop:
	ops/services.sh stop $(RUNDIR)

test: install deps
	$(MAKE) -C firmware all test
	$(BIN)/pytest -q

# Unit tests only: no servers, no processes, no emulator (under a minute).
test-fast: install
	FUZZ_EXAMPLES=1000 $(BIN)/pytest -q -m "not e2e and not integration"

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy gateway
	$(BIN)/lint-imports

bench: install deps
	$(BIN)/python -m bench

fuzz: install
	FUZZ_EXAMPLES=100000 $(BIN)/pytest -q tests/test_fuzz.py

# The long variants of the fault scripts (marked soak; `make test` runs their short
# ones), then the duplicate kill loops with SOAK_KILLS.
soak: install deps
	SOAK_KILLS=300 $(BIN)/pytest -q -m soak tests/faults
	SOAK_KILLS=300 $(BIN)/pytest -q tests/faults/test_duplicates.py

# Power cuts on LazyFS: every kind of cut, POWERCUT_CUTS of them per case, then one
# table of the figures (`make test` runs a few cuts of the short cases only).
POWERCUT_CUTS ?= 20
powercut: install deps
	mkdir -p $(RUNDIR) && rm -f $(RUNDIR)/powercut.jsonl
	POWERCUT_CUTS=$(POWERCUT_CUTS) POWERCUT_REPORT=$(CURDIR)/$(RUNDIR)/powercut.jsonl \
		$(BIN)/pytest -q tests/faults/test_powercut.py; status=$$?; \
		$(BIN)/python -m tests.faults.powercut_table $(RUNDIR)/powercut.jsonl; exit $$status

clean:
	rm -rf $(VENV) $(RUNDIR) firmware/build .pytest_cache .mypy_cache .ruff_cache
