# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed
# here, into .venv, from pyproject.toml: nothing is expected to be installed by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# `make bench`: every benchmark in bench/, each adding rows to bench/RESULTS.md (docs/performance.md
# says what each measures). About 45 minutes before the fleet: the day (run.py) ~12 of them with
# the old design's SQLite, the process tweaks' A/B (tweaks.py) ~15. Fleet sizes (bench/fleet.py):
# 10-16 min a size, as it waits for real 5-minute ticks; `make bench FLEET_SITES=50,100,300,500,1000`
# for the full series.
FLEET_SITES ?= 50,100

.PHONY: install demo test dev bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# An editable install leaves our own modules uncompiled; where PYTHONDONTWRITEBYTECODE is set
	# (as on CI) every dagster/vitals process would then compile them: ~0.1 s a command.
	$(BIN)/python -m compileall -q vitals_pipeline
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vitals demo

test: $(STAMP)
	$(BIN)/ruff check vitals_pipeline vitals_pipeline_tests bench
	bash scripts/system-packages.sh
	$(BIN)/python -m pytest -n 2 --timeout 240 $(PYTEST_ARGS)

dev: $(STAMP)
	$(BIN)/vitals dev

bench: $(STAMP)
	$(BIN)/python -m compileall -q vitals_pipeline
	$(BIN)/python bench/run.py
	$(BIN)/python bench/week.py
	$(BIN)/python bench/ticks.py
	$(BIN)/python bench/ticks.py --sites 100
	$(BIN)/python bench/checks_cost.py
	$(BIN)/python bench/tweaks.py
	$(BIN)/python bench/parse_page.py
	$(BIN)/python bench/defs_load.py
	$(BIN)/python bench/event_log.py
	$(BIN)/python bench/fleet.py --sites $(FLEET_SITES) --broken-site

clean:
	rm -rf $(VENV) .dagster_home data bench/out
